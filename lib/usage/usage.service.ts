import { Inject, Injectable, Logger } from '@nestjs/common';
import type { NormalizedUsage } from '../call/upstream-call.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import { subjectKey, type OpenAIStore } from '../storage/openai-store.interface.js';
import { storageUnavailable } from '../throttling/rate-limit.exceptions.js';

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

/** The fields one call adds to a usage record (zeros left out). */
function usageFields(entry: UsageEntry): Record<string, number> {
  const u = entry.usage;
  const cost = entry.costUsd ?? 0;
  const model = label(entry.model);
  const route = label(entry.route ?? 'none');
  const tier = label(entry.serviceTier ?? 'default');
  const fields: Record<string, number> = {
    requests: 1,
    prompt_tokens: u.prompt_tokens,
    cached_tokens: u.cached_tokens,
    completion_tokens: u.completion_tokens,
    reasoning_tokens: u.reasoning_tokens,
    cost_usd: cost,
    unpriced_requests: entry.costUsd === null ? 1 : 0,
    estimated_requests: u.estimated ? 1 : 0,
    [`m|${model}|requests`]: 1,
    [`m|${model}|total_tokens`]: u.total_tokens,
    [`m|${model}|cost_usd`]: cost,
    [`m|${model}|unpriced_requests`]: entry.costUsd === null ? 1 : 0,
    [`r|${route}|requests`]: 1,
    [`r|${route}|total_tokens`]: u.total_tokens,
    [`r|${route}|cost_usd`]: cost,
    [`r|${route}|unpriced_requests`]: entry.costUsd === null ? 1 : 0,
    [`t|${tier}|requests`]: 1,
    [`t|${tier}|total_tokens`]: u.total_tokens,
    [`t|${tier}|cost_usd`]: cost,
    [`t|${tier}|unpriced_requests`]: entry.costUsd === null ? 1 : 0,
  };
  for (const k of Object.keys(fields)) if (fields[k] === 0) delete fields[k];
  return fields;
}

/**
 * The usage ledger: per user and for the project, per UTC day and month, with breakdowns by model and
 * by route. Writes go to the shared store off the request path (one atomic write per key); `flush()`
 * (called by the module on shutdown, before the store closes) waits for those in flight.
 */
@Injectable()
export class UsageService {
  private readonly logger = new Logger('OpenAIUsage');
  private readonly pending = new Set<Promise<void>>();
  private buffer: Array<{ entry: UsageEntry; at: Date }> = [];
  private scheduled = false;

  constructor(
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
  ) {}

  /**
   * Records one call and returns at once: calls are buffered and written right after the current turn
   * of the event loop, summed per key (one write per key for a burst of calls), off the request path.
   * `flush()` writes and waits; `totals()` flushes first, so an instance reads its own writes.
   */
  record(entry: UsageEntry, at = new Date()): void {
    if (!this.options.usage.enabled) return;
    this.buffer.push({ entry, at });
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.drain());
    }
  }

  private drain(): void {
    this.scheduled = false;
    const batch = this.buffer;
    this.buffer = [];
    if (batch.length === 0) return;
    const sums = new Map<string, { fields: Record<string, number>; ttlMs: number }>();
    const add = (key: string, fields: Record<string, number>, ttlMs: number) => {
      const e = sums.get(key);
      if (!e) sums.set(key, { fields: { ...fields }, ttlMs });
      else for (const [k, v] of Object.entries(fields)) e.fields[k] = (e.fields[k] ?? 0) + v;
    };
    const dayTtl = this.options.usage.dailyRetentionDays * DAY_MS;
    const monthTtl = this.options.usage.monthlyRetentionDays * DAY_MS;
    for (const { entry, at } of batch) {
      let fields: Record<string, number>;
      try {
        fields = usageFields(entry);
      } catch (err) {
        // Runs in setImmediate: a throw here would end the process. One bad record is logged and skipped.
        this.logger.error(`a usage record could not be read: ${(err as Error)?.message ?? String(err)}`);
        continue;
      }
      const { day, month } = periodKeys(at);
      add(this.key(null, day), fields, dayTtl);
      add(this.key(null, month), fields, monthTtl);
      if (entry.user !== undefined) {
        add(this.key(entry.user, day), fields, dayTtl);
        add(this.key(entry.user, month), fields, monthTtl);
      }
    }
    const p = Promise.all(
      [...sums].map(([key, e]) => this.store.incrementFields(key, e.fields, e.ttlMs)),
    ).then(
      () => undefined,
      (err: unknown) =>
        this.logger.error(`recording usage failed: ${(err as Error)?.message ?? String(err)}`),
    );
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
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

  /** Waits until every recorded call is written. */
  async flush(): Promise<void> {
    if (this.scheduled) this.drain();
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  private key(user: string | null, period: string): string {
    return user === null ? `usage:project:${period}` : subjectKey(user, `usage:${period}`);
  }
}
