import { randomBytes } from 'node:crypto';
import { Inject, Injectable, Logger, Optional, type OnApplicationShutdown } from '@nestjs/common';
import { Counter, Gauge } from 'prom-client';
import type { NormalizedUsage } from '../call/upstream-call.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import { subjectKey, type OpenAIStore } from '../storage/openai-store.interface.js';
import { storageUnavailable } from '../throttling/rate-limit.exceptions.js';
import { memoized } from '../utils/bounded-memo.js';

/** Totals of a period (tokens; USD). */
export interface UsageTotals {
  requests: number;
  prompt_tokens: number;
  /** Part of `prompt_tokens` served from OpenAI's prompt cache. */
  cached_tokens: number;
  completion_tokens: number;
  /** Part of `completion_tokens` spent on reasoning. */
  reasoning_tokens: number;
  /** Spend of the priced calls (USD). */
  cost_usd: number;
  /** Calls to models without a price: their cost is not in `cost_usd`. */
  unpriced_requests: number;
  /** Calls whose usage was estimated (a stream cut before its usage chunk). */
  estimated_requests: number;
}

/** A breakdown line (per model or per route). */
export interface UsageBreakdown {
  requests: number;
  total_tokens: number;
  /** Spend of the line's priced calls (USD); `null` when every call of the line was to a model without a price. */
  cost_usd: number | null;
  /** Calls of the line to models without a price: their cost is not in `cost_usd`. */
  unpriced_requests: number;
}

/** Usage of a user or of the whole project for one period. */
export interface UsageReport extends UsageTotals {
  /** The user, or `null` for the project. */
  user: string | null;
  period: 'day' | 'month';
  /** `YYYY-MM-DD` or `YYYY-MM` (UTC). */
  period_key: string;
  by_model: Record<string, UsageBreakdown>;
  by_route: Record<string, UsageBreakdown>;
  /** By the service tier that served the calls (`default`, `flex`, `priority`, `batch`, ...). */
  by_service_tier: Record<string, UsageBreakdown>;
}

/** One call to record. */
export interface UsageEntry {
  user?: string;
  route?: string;
  model: string;
  usage: NormalizedUsage;
  /** USD, or null when the model has no price. */
  costUsd: number | null;
  /** The service tier that served the call (`default` when unreported). */
  serviceTier?: string;
}

const DAY_MS = 86_400_000;
const TOTAL_FIELDS = [
  'requests',
  'prompt_tokens',
  'cached_tokens',
  'completion_tokens',
  'reasoning_tokens',
  'cost_usd',
  'unpriced_requests',
  'estimated_requests',
] as const;

/** UTC period keys of `at`. */
export function periodKeys(at: Date): { day: string; month: string } {
  const iso = at.toISOString();
  return { day: iso.slice(0, 10), month: iso.slice(0, 7) };
}

/** Sums of float prices drift in the last digits; a nano-dollar is far below any price. */
const roundUsd = (usd: number) => Math.round(usd * 1e9) / 1e9;

const label = (s: unknown) => String(s).replace(/[|]/g, '_').slice(0, 120);

/** Sums of one breakdown line (a model, a route or a service tier). */
interface LineSums {
  requests: number;
  total_tokens: number;
  cost_usd: number;
  unpriced_requests: number;
}

/**
 * The calls summed in process for one ledger key until its next write: the totals as plain numbers and
 * the breakdown lines in maps, so recording a call is a few additions (the record's field names, e.g.
 * `m|<model>|cost_usd`, are built once per key and write by `toFields`).
 */
class UsageSums {
  requests = 0;
  prompt_tokens = 0;
  cached_tokens = 0;
  completion_tokens = 0;
  reasoning_tokens = 0;
  cost_usd = 0;
  unpriced_requests = 0;
  estimated_requests = 0;
  readonly lines = new Map<string, LineSums>();

  constructor(readonly ttlMs: number) {}

  add(entry: UsageEntry, model: string, route: string, tier: string): void {
    const u = entry.usage;
    const cost = entry.costUsd ?? 0;
    const unpriced = entry.costUsd === null ? 1 : 0;
    this.requests++;
    this.prompt_tokens += u.prompt_tokens;
    this.cached_tokens += u.cached_tokens;
    this.completion_tokens += u.completion_tokens;
    this.reasoning_tokens += u.reasoning_tokens;
    this.cost_usd += cost;
    this.unpriced_requests += unpriced;
    if (u.estimated) this.estimated_requests++;
    this.line(model, u.total_tokens, cost, unpriced);
    this.line(route, u.total_tokens, cost, unpriced);
    this.line(tier, u.total_tokens, cost, unpriced);
  }

  private line(key: string, tokens: number, cost: number, unpriced: number): void {
    let l = this.lines.get(key);
    if (!l) this.lines.set(key, (l = { requests: 0, total_tokens: 0, cost_usd: 0, unpriced_requests: 0 }));
    l.requests++;
    l.total_tokens += tokens;
    l.cost_usd += cost;
    l.unpriced_requests += unpriced;
  }

  /** The record's fields (zeros left out): totals, then `m|`, `r|` and `t|` lines. */
  toFields(): Record<string, number> {
    const fields: Record<string, number> = {};
    for (const f of TOTAL_FIELDS) if (this[f] !== 0) fields[f] = this[f];
    for (const [prefix, l] of this.lines) {
      if (l.requests) fields[`${prefix}|requests`] = l.requests;
      if (l.total_tokens) fields[`${prefix}|total_tokens`] = l.total_tokens;
      if (l.cost_usd) fields[`${prefix}|cost_usd`] = l.cost_usd;
      if (l.unpriced_requests) fields[`${prefix}|unpriced_requests`] = l.unpriced_requests;
    }
    return fields;
  }
}

/** A key's summed fields in a batch, with what is known of its write. */
interface KeyWrite {
  fields: Record<string, number>;
  ttlMs: number;
  /**
   * The value this instance's write counter (`w|<instance>`) of the key has once this write is applied,
   * when known: a write whose outcome is unknown is checked against it before it is sent again.
   */
  seq?: number;
  /** Sent at least once (it may have been applied even though it failed). */
  sent: boolean;
}

/** Records frozen for one pipelined write; keys leave it as their write is confirmed. */
interface Batch {
  records: number;
  writes: Map<string, KeyWrite>;
}

/** Most keys whose write counter is remembered (users x periods); past periods are forgotten first. */
const MAX_COUNTERS = 100_000;

/** Where the ledger writes: the store itself, not the failure policy in front of it (see `UsageService`). */
function ledgerStore(store: OpenAIStore): OpenAIStore {
  // `ResilientStore` answers a failed write by its policy (into its memory fallback, or not at all), so a
  // write the ledger keeps and retries must reach the primary store, whose errors it sees.
  const primary = (store as unknown as { primary?: unknown }).primary;
  return primary && typeof (primary as OpenAIStore).incrementFields === 'function'
    ? (primary as OpenAIStore)
    : store;
}

/**
 * The usage ledger: per user and for the project, per UTC day and month, with breakdowns by model, route
 * and service tier.
 *
 * Calls are summed in process per key and written once per `usage.flushIntervalMs` (one write per key,
 * all sent at once: pipelined on the Redis connection), on `flush()` (the module calls it on shutdown,
 * before the store closes) and before `totals()` reads. When the store fails, the batch is kept and
 * written again with the same sums once it is back (backoff from `flushIntervalMs` up to 10 s), while new
 * calls keep being summed; past `usage.maxPendingRecords` unwritten calls the oldest batch is dropped
 * (an error log, `openai_usage_records_dropped_total`). A write whose outcome is unknown (a timeout, a
 * connection lost with the command sent) is not sent twice blindly: each write also adds 1 to the key's
 * field `w|<instance>`, and before sending it again the ledger reads that counter back (over the same
 * connection, which Redis serves in order) to see whether it was applied.
 *
 * The ledger never sits on the request path, and budgets do not read it: they keep their own counters.
 */
type LineKind = 'm|' | 'r|' | 't|';
/** The field prefix of a breakdown line, per kind (made once: `line` passes them to the memo). */
const LINE_PREFIX: Record<LineKind, (name: string) => string> = {
  'm|': (name) => `m|${label(name)}`,
  'r|': (name) => `r|${label(name)}`,
  't|': (name) => `t|${label(name)}`,
};

@Injectable()
export class UsageService implements OnApplicationShutdown {
  private readonly logger = new Logger('OpenAIUsage');
  /** Written to: the primary store (Redis), bypassing the failure policy. */
  private readonly ledger: OpenAIStore;
  /** This process's write counter field (see the class comment). */
  private readonly marker = `w|${randomBytes(6).toString('hex')}`;
  /** Calls summed since the last freeze. */
  private current = new Map<string, UsageSums>();
  /** The UTC day the cached period keys are of (epoch ms of its start), and those keys. */
  private periodStart = -1;
  private periods = { day: '', month: '' };
  /** Memoized line prefixes (see `line`). */
  private readonly models = new Map<string, string>();
  private readonly routes = new Map<string, string>();
  private readonly tiers = new Map<string, string>();
  private currentRecords = 0;
  /** The batch being written, or kept after a failure. */
  private batch: Batch | null = null;
  private inflight = false;
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private lastFailureLogAt = 0;
  private closed = false;
  /** Per key: this instance's write counter as last confirmed (null: unknown). */
  private readonly counters = new Map<string, number | null>();
  /** False once counters were forgotten before the day turned: a key without one is then unknown. */
  private countersComplete = true;
  private countersPeriod = '';
  private readonly dropped?: Counter;
  private readonly pendingGauge?: Gauge;

  constructor(
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    @Optional() metrics?: OpenAIMetricsService,
  ) {
    this.ledger = ledgerStore(store);
    if (metrics && options.metrics.enabled) {
      const p = options.metrics.prefix;
      const registry = metrics.registry;
      this.dropped =
        (registry.getSingleMetric(`${p}usage_records_dropped_total`) as Counter | undefined) ??
        new Counter({
          name: `${p}usage_records_dropped_total`,
          help: 'Usage records dropped unwritten: more than usage.maxPendingRecords kept while the store failed',
          registers: [registry],
        });
      this.pendingGauge =
        (registry.getSingleMetric(`${p}usage_records_pending`) as Gauge | undefined) ??
        new Gauge({
          name: `${p}usage_records_pending`,
          help: 'Usage records recorded in this process and not yet written to the store',
          registers: [registry],
        });
    }
  }

  /** Calls recorded and not yet written (this instance). */
  get pendingRecords(): number {
    return this.currentRecords + (this.batch?.records ?? 0);
  }

  /**
   * Records one call and returns at once: it is summed in process and written with the next flush
   * (every `usage.flushIntervalMs`), off the request path. `flush()` writes and waits; `totals()`
   * flushes first, so an instance reads its own writes.
   */
  record(entry: UsageEntry, at = new Date()): void {
    if (!this.options.usage.enabled) return;
    let model: string, route: string, tier: string;
    try {
      model = this.line('m|', entry.model);
      route = this.line('r|', entry.route ?? 'none');
      tier = this.line('t|', entry.serviceTier ?? 'default');
    } catch (err) {
      // One bad record is logged and skipped: it must not fail the call that settled it.
      this.logger.error(`a usage record could not be read: ${(err as Error)?.message ?? String(err)}`);
      return;
    }
    const { day, month } = this.periodsOf(at);
    this.add(this.key(null, day), entry, model, route, tier, this.options.usage.dailyRetentionDays);
    this.add(this.key(null, month), entry, model, route, tier, this.options.usage.monthlyRetentionDays);
    if (entry.user !== undefined) {
      this.add(this.key(entry.user, day), entry, model, route, tier, this.options.usage.dailyRetentionDays);
      this.add(
        this.key(entry.user, month),
        entry,
        model,
        route,
        tier,
        this.options.usage.monthlyRetentionDays,
      );
    }
    this.currentRecords++;
    this.pendingGauge?.inc();
    if (this.pendingRecords > this.options.usage.maxPendingRecords) this.overflow();
    else this.arm(this.options.usage.flushIntervalMs);
  }

  /** A breakdown line's field prefix (`m|<model>`), memoized for string names (bounded). */
  private line(kind: LineKind, name: unknown): string {
    if (typeof name !== 'string') return `${kind}${label(name)}`;
    const memo = kind === 'm|' ? this.models : kind === 'r|' ? this.routes : this.tiers;
    return memoized(memo, name, 1_000, LINE_PREFIX[kind]);
  }

  /** The period keys of `at`, computed once per UTC day. */
  private periodsOf(at: Date): { day: string; month: string } {
    const t = at.getTime();
    if (t < this.periodStart || t >= this.periodStart + DAY_MS) {
      this.periods = periodKeys(at);
      this.periodStart = t - (t % DAY_MS);
    }
    return this.periods;
  }

  private add(
    key: string,
    entry: UsageEntry,
    model: string,
    route: string,
    tier: string,
    retentionDays: number,
  ): void {
    let sums = this.current.get(key);
    if (!sums) this.current.set(key, (sums = new UsageSums(retentionDays * DAY_MS)));
    sums.add(entry, model, route, tier);
  }

  /** Over the bound: drop the oldest batch (kept after a failure), or write the current one now. */
  private overflow(): void {
    if (this.batch && !this.inflight) {
      const lost = this.batch.records;
      // A dropped write that may have been applied leaves its key's counter unknown.
      for (const [key, w] of this.batch.writes) if (w.sent) this.counters.set(key, null);
      this.batch = null;
      this.dropped?.inc(lost);
      this.pendingGauge?.dec(lost);
      this.logger.error(
        `usage: ${lost} records dropped unwritten (the oldest): more than usage.maxPendingRecords (${this.options.usage.maxPendingRecords}) kept while the store fails`,
      );
      this.arm(0);
    } else if (!this.batch) {
      this.arm(0);
    }
  }

  /** Schedules a flush in `delayMs` unless one is scheduled sooner. */
  private arm(delayMs: number): void {
    if (this.closed && delayMs > 0) return;
    if (this.timer) {
      if (delayMs > 0) return;
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.cycle();
    }, delayMs);
    this.timer.unref?.();
  }

  /** One flush at a time: the batch kept from a failure is written before new records are frozen. */
  private cycle(): Promise<void> {
    this.running ??= this.write().finally(() => (this.running = null));
    return this.running;
  }

  private async write(): Promise<void> {
    for (let pass = 0; pass < 2; pass++) {
      if (!this.batch) {
        if (this.currentRecords === 0) break;
        this.batch = this.freeze();
      }
      const batch = this.batch;
      const error = await this.send(batch);
      if (this.batch !== batch) continue; // dropped by the bound meanwhile
      if (error === undefined) {
        this.batch = null;
        this.pendingGauge?.dec(batch.records);
        if (this.failures > 0)
          this.logger.log(
            `usage: the store is back, records kept since ${this.failures} failed writes are written`,
          );
        this.failures = 0;
        continue;
      }
      this.failures++;
      const delay = Math.min(
        this.options.usage.flushIntervalMs * 2 ** (this.failures - 1),
        Math.max(this.options.usage.flushIntervalMs, 10_000),
      );
      const now = Date.now();
      if (this.failures === 1 || now - this.lastFailureLogAt >= 10_000) {
        this.lastFailureLogAt = now;
        this.logger.error(
          `recording usage failed: ${error instanceof Error ? error.message : String(error as string)}; ${this.pendingRecords} records kept in process and written when the store is back, lost if the process exits before (next try in ${delay} ms)`,
        );
      }
      if (!this.closed) {
        if (this.timer) clearTimeout(this.timer);
        this.timer = undefined;
        this.arm(delay);
      }
      return;
    }
    if (this.currentRecords > 0) this.arm(this.options.usage.flushIntervalMs);
  }

  private freeze(): Batch {
    const { day, month } = periodKeys(new Date());
    if (this.countersPeriod !== day) {
      // Counters of past periods are only needed for a late write: forget them when the day turns.
      this.countersPeriod = day;
      this.countersComplete = true;
      for (const key of this.counters.keys())
        if (!key.endsWith(`:${day}`) && !key.endsWith(`:${month}`)) this.counters.delete(key);
    }
    if (this.counters.size > MAX_COUNTERS) {
      // Too many keys today: forget them all; until the day turns, a key without a counter is unknown.
      this.counters.clear();
      this.countersComplete = false;
    }
    const writes = new Map<string, KeyWrite>();
    for (const [key, e] of this.current) {
      // This process's counter field is its own: a key it never wrote has 0.
      const known = this.counters.has(key) ? this.counters.get(key)! : this.countersComplete ? 0 : null;
      writes.set(key, {
        fields: e.toFields(),
        ttlMs: e.ttlMs,
        seq: known === null ? undefined : known + 1,
        sent: false,
      });
    }
    const batch = { records: this.currentRecords, writes };
    this.current = new Map();
    this.currentRecords = 0;
    return batch;
  }

  /** Writes every key of the batch at once; confirmed keys leave it. Resolves the last error, if any. */
  private async send(batch: Batch): Promise<unknown> {
    this.inflight = true;
    let error: unknown;
    try {
      await Promise.all(
        [...batch.writes].map(async ([key, w]) => {
          try {
            if (w.sent) {
              // The last try may have been applied: the key's write counter says whether it was.
              const v = (await this.ledger.getFields(key))[this.marker] ?? 0;
              if (w.seq !== undefined && v >= w.seq) {
                this.counters.set(key, v);
                batch.writes.delete(key);
                return;
              }
              if (w.seq === undefined && v > 0)
                this.logger.warn(
                  `usage: a write to ${key} timed out and its outcome cannot be checked (its counter was forgotten); writing it again may count it twice`,
                );
              w.seq = v + 1;
            }
            w.sent = true;
            await this.ledger.incrementFields(key, { ...w.fields, [this.marker]: 1 }, w.ttlMs);
            this.counters.set(key, w.seq ?? null);
            batch.writes.delete(key);
          } catch (err) {
            error = err ?? new Error('unknown store error');
          }
        }),
      );
    } finally {
      this.inflight = false;
    }
    return error;
  }

  /** Stops the timer; `flush()` (called by the module before the store closes) writes what is left. */
  onApplicationShutdown(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * Totals of `user` (or of the project when `user` is null) for the UTC day or month containing `at`.
   * Includes what was recorded on every instance sharing the store.
   */
  async totals(user: string | null, period: 'day' | 'month' = 'day', at = new Date()): Promise<UsageReport> {
    const keys = periodKeys(at);
    const periodKey = period === 'day' ? keys.day : keys.month;
    await this.flush();
    const raw = await this.store.getFields(this.key(user, periodKey)).catch(storageUnavailable);
    const report: UsageReport = {
      user,
      period,
      period_key: periodKey,
      ...(Object.fromEntries(TOTAL_FIELDS.map((f) => [f, raw[f] ?? 0])) as unknown as UsageTotals),
      by_model: {},
      by_route: {},
      by_service_tier: {},
    };
    report.cost_usd = roundUsd(report.cost_usd);
    for (const [field, raw_] of Object.entries(raw)) {
      const parts = field.split('|');
      const value = parts[2] === 'cost_usd' ? roundUsd(raw_) : raw_;
      if (parts.length !== 3) continue;
      const target =
        parts[0] === 'm'
          ? report.by_model
          : parts[0] === 'r'
            ? report.by_route
            : parts[0] === 't'
              ? report.by_service_tier
              : undefined;
      if (!target) continue;
      const line = (target[parts[1]] ??= { requests: 0, total_tokens: 0, cost_usd: 0, unpriced_requests: 0 });
      (line as unknown as Record<string, number>)[parts[2]] = value;
    }
    // A model (or route) whose calls were all unpriced has an unknown cost, not a cost of $0.
    for (const line of [
      ...Object.values(report.by_model),
      ...Object.values(report.by_route),
      ...Object.values(report.by_service_tier),
    ]) {
      if (line.requests > 0 && line.unpriced_requests >= line.requests) line.cost_usd = null;
    }
    return report;
  }

  /**
   * Writes every call recorded so far and waits (one attempt: when the store fails, the records stay
   * in process and are written later; an error is logged, nothing thrown).
   */
  async flush(): Promise<void> {
    if (this.running) await this.running;
    await this.cycle();
  }

  private key(user: string | null, period: string): string {
    return user === null ? `usage:project:${period}` : subjectKey(user, `usage:${period}`);
  }
}
