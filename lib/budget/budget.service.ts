import { Inject, Injectable, Logger, type BeforeApplicationShutdown } from '@nestjs/common';
import { Subject, type Observable } from 'rxjs';
import type { CallReservation, OpenAICallHook, SettledCall, UpstreamCall } from '../call/upstream-call.js';
import { RequestContextStore } from '../request-context/request-context.js';
import type { ResolvedOpenAIOptions, SpendLimit } from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import { PricingService } from '../pricing/pricing.service.js';
import {
  keyPart,
  subjectKey,
  type AdjustOp,
  type OpenAIStore,
  type WindowLimit,
  type WindowState,
} from '../storage/openai-store.interface.js';
import { storageUnavailable } from '../throttling/rate-limit.exceptions.js';
import { holdOne, type HoldPlan, type PlannedHook } from '../call/reservation-plan.js';
import type { BudgetAlertEvent } from './budget-alert.event.js';
import { BudgetExceededException, UnpricedModelException } from './budget.exceptions.js';
import { ProjectLeases } from './project-leases.js';

/** Budgets are counted in micro-USD (integers), so concurrent updates stay exact. */
const MICRO = 1e6;

/**
 * A cost in whole micro-USD, rounded up. Float sums of prices drift in the last digits
 * (123e-6 * 1e6 = 123.00000000000001), so round to nano-USD first: a whole micro-USD stays whole.
 */
const toMicro = (usd: number) => Math.ceil(Math.round(usd * MICRO * 1000) / 1000);

/** A budget's state for one period. */
export interface BudgetStatus {
  period: 'day' | 'month';
  limit_usd: number;
  /** Spend so far including in-flight reservations (USD). */
  spent_usd: number;
  remaining_usd: number;
  /** ISO 8601 (UTC). */
  resets_at: string;
}

interface Subject_ {
  scope: 'user' | 'project';
  user?: string;
  key: string;
  windows: WindowLimit[];
}

/** A call's hold on one subject's budget. */
interface Held {
  subject: Subject_;
  /** Adds the settlement's difference to the hold (negative: gives back). */
  adjust(delta: number): Promise<void>;
  /** Held on this instance's project lease: alerts follow the lease's operations. */
  leased?: boolean;
}

/** What the alert check needs of a window: its period and the spend counted in it. */
type SpendWindow = Pick<WindowState, 'name' | 'limit' | 'used' | 'start'>;

const PROJECT_KEY = 'budget:project';

/** The UTC calendar windows (day and/or month) of a spend limit, in micro-USD. */
export function budgetWindows(limit: SpendLimit, now = new Date()): WindowLimit[] {
  const out: WindowLimit[] = [];
  const y = now.getUTCFullYear();
  const m = now.getUTCMonth();
  if (limit.dailyUsd !== undefined) {
    const start = Date.UTC(y, m, now.getUTCDate());
    out.push({
      name: 'day',
      limit: Math.round(limit.dailyUsd * MICRO),
      windowMs: 86_400_000,
      startAt: start,
    });
  }
  if (limit.monthlyUsd !== undefined) {
    const start = Date.UTC(y, m, 1);
    out.push({
      name: 'month',
      limit: Math.round(limit.monthlyUsd * MICRO),
      windowMs: Date.UTC(y, m + 1, 1) - start,
      startAt: start,
    });
  }
  return out;
}

/**
 * Spend budgets per user and for the project, per UTC day and month. Before a call it atomically
 * reserves the call's highest possible cost (prompt tokens plus `max_tokens` at the dearest candidate
 * model's prices), so concurrent calls cannot overspend; after the call it settles to the real cost,
 * and releases the hold on every other ending. Alerts fire once per threshold, period and subject.
 */
@Injectable()
export class BudgetService implements OpenAICallHook, PlannedHook, BeforeApplicationShutdown {
  private readonly logger = new Logger('OpenAIBudget');
  private readonly alertSubject = new Subject<BudgetAlertEvent>();
  /** Budget alerts, as they fire on this instance. */
  readonly alerts$: Observable<BudgetAlertEvent> = this.alertSubject.asObservable();
  private readonly pending = new Set<Promise<void>>();
  /** The project budget's leases (a store that has them, leases enabled); else per call. */
  private readonly leases?: ProjectLeases;
  /** Alert ids this instance already saw set (fired here or elsewhere): not asked for again. */
  private readonly alerted = new Set<string>();
  /** Windows per spend limit for the UTC day starting at `windowsDay` (epoch ms). */
  private windowsCache = new WeakMap<SpendLimit, WindowLimit[]>();
  private windowsDay = -1;
  /** `budgets.alertThresholds`, ascending. */
  private thresholds?: number[];

  constructor(
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    private readonly pricing: PricingService,
    private readonly metrics: OpenAIMetricsService,
  ) {
    const lease = options.budgets.projectLeases;
    if (lease && ProjectLeases.supported(store, lease))
      this.leases = new ProjectLeases(
        store,
        PROJECT_KEY,
        { ...lease, instances: options.storage?.instances ?? 1 },
        (windows) => this.projectState(windows),
        (what, err) => this.logger.warn(`${what} failed: ${(err as Error)?.message ?? String(err)}`),
      );
  }

  /**
   * Returns this instance's project lease before the app's server closes (calls still in flight then
   * settle on the project counter itself); later calls reserve per call.
   */
  async beforeApplicationShutdown(): Promise<void> {
    await this.leases?.close();
  }

  /** The spend limit of `user` (its own, else the configured per-user one). */
  async userLimit(user: string): Promise<SpendLimit> {
    return (await this.options.budgets.userLimits?.(user)) ?? this.options.budgets.user;
  }

  private async subjects(user: string | undefined, now: Date): Promise<Subject_[]> {
    const out: Subject_[] = [];
    if (user !== undefined) {
      const limit = this.options.budgets.userLimits ? await this.userLimit(user) : this.options.budgets.user;
      const windows = this.windowsOf(limit, now);
      if (windows.length) out.push({ scope: 'user', user, key: subjectKey(user, 'budget'), windows });
    }
    const project = this.windowsOf(this.options.budgets.project, now);
    if (project.length) out.push({ scope: 'project', key: PROJECT_KEY, windows: project });
    return out;
  }

  /** The windows of `limit` at `now`: computed once per limit and UTC day (they change only when it turns). */
  private windowsOf(limit: SpendLimit, now: Date): WindowLimit[] {
    const t = now.getTime();
    if (t < this.windowsDay || t >= this.windowsDay + 86_400_000) {
      this.windowsCache = new WeakMap();
      this.windowsDay = t - (t % 86_400_000);
    }
    let w = this.windowsCache.get(limit);
    if (!w) this.windowsCache.set(limit, (w = budgetWindows(limit, now)));
    return w;
  }

  /** Reserves alone (outside the call pipeline, which joins `plan` with the token limits' hold). */
  async reserve(call: UpstreamCall): Promise<CallReservation | void> {
    return holdOne(this.store, await this.plan(call));
  }

  /**
   * The budget holds of `call`: its highest possible cost against the user's and the project's budgets
   * (the project's on this instance's lease when it can, else a store consume).
   * @throws UnpricedModelException, BudgetExceededException (429, from a per-call project hold).
   */
  async plan(call: UpstreamCall): Promise<HoldPlan | undefined> {
    if (call.endpoint === 'moderations') return undefined;
    const now = new Date();
    const subjects = await this.subjects(call.user, now);
    if (subjects.length === 0) return undefined;
    let maxCost = 0;
    for (const model of call.candidates) {
      // Reserve at the tier the call may be billed at: Priority when asked for. When no tier (or `auto`)
      // is asked for, the project's default tier decides upstream; with `reserveTier: 'dearest'` (for a
      // project whose default is Priority) the dearer of the standard and the Priority price.
      const tier = call.serviceTier;
      let c = this.pricing.maxCost(
        model,
        call.promptTokens,
        call.maxOutputTokens,
        tier === 'priority' ? 'priority' : 'standard',
      );
      if (
        this.options.budgets.reserveTier === 'dearest' &&
        (tier === undefined || tier === 'auto') &&
        c !== null &&
        this.pricing.tierPriceOf(model, 'priority')
      )
        c = Math.max(
          c,
          this.pricing.maxCost(model, call.promptTokens, call.maxOutputTokens, 'priority') ?? c,
        );
      if (c === null) {
        if (this.options.budgets.unpricedModels === 'reject') throw new UnpricedModelException(model);
        continue;
      }
      maxCost = Math.max(maxCost, c);
    }
    return this.planHold(subjects, maxCost);
  }

  /** Budget state of `user` (or of the project when `user` is null), per period that has a limit. */
  async status(user: string | null, now = new Date()): Promise<BudgetStatus[]> {
    const subjects = await this.subjects(user ?? undefined, now);
    const subject = subjects.find((s) => (user === null ? s.scope === 'project' : s.scope === 'user'));
    if (!subject) return [];
    const peek = await this.spend(subject).catch(storageUnavailable);
    return peek.map((w) => ({
      period: w.name as 'day' | 'month',
      limit_usd: w.limit / MICRO,
      spent_usd: w.used / MICRO,
      remaining_usd: Math.max(0, w.limit - w.used) / MICRO,
      resets_at: new Date(w.start + subject.windows.find((x) => x.name === w.name)!.windowMs).toISOString(),
    }));
  }

  /** Waits for alert checks (and project lease operations) in flight. */
  async flush(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
    await this.leases?.flush();
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  /**
   * The spend counted in each window of `subject` (holds of calls in flight included). The project's,
   * with leases: the counter less what live leases hold unused (after reporting this instance's use).
   */
  private async spend(subject: Subject_): Promise<SpendWindow[]> {
    if (subject.scope === 'project' && this.leases) {
      try {
        const r = await this.leases.read(subject.windows);
        return r.windows.map((w) => ({ ...w, used: Math.max(0, w.used - w.leased) }));
      } catch {
        // the store's failure policy answers below
      }
    }
    return (await this.store.consume(subject.key, subject.windows, 0)).windows;
  }

  /** The project windows after a lease operation: alerts on the project's spend. */
  private projectState(windows: ReadonlyArray<SpendWindow & { leased: number }>): void {
    if (windows.length === 0) return;
    const subject: Subject_ = {
      scope: 'project',
      key: PROJECT_KEY,
      windows: budgetWindows(this.options.budgets.project, new Date(windows[0].start)),
    };
    this.track(
      this.fireAlerts(
        subject,
        windows.map((w) => ({ ...w, used: Math.max(0, w.used - w.leased) })),
      ),
    );
  }

  private track(p: Promise<void>): void {
    const q = p.catch((err: unknown) =>
      this.logger.error(`budget alert check failed: ${(err as Error)?.message ?? String(err)}`),
    );
    this.pending.add(q);
    void q.finally(() => this.pending.delete(q));
  }

  private async adjustAll(held: Held[], delta: number): Promise<void> {
    if (delta === 0) return;
    await Promise.all(held.map((h) => h.adjust(delta)));
  }

  private async checkAlerts(held: Held[]): Promise<void> {
    for (const h of held) {
      // a call held on the project lease: the lease's operations report the project's spend
      if (h.leased) continue;
      await this.fireAlerts(h.subject, await this.spend(h.subject));
    }
  }

  /** True when some window's spend has reached the lowest alert threshold (else no alert can fire). */
  private alertDue(windows: readonly SpendWindow[]): boolean {
    const lowest = this.sortedThresholds()[0];
    return lowest !== undefined && windows.some((w) => w.used >= lowest * w.limit);
  }

  private sortedThresholds(): number[] {
    return (this.thresholds ??= [...this.options.budgets.alertThresholds].sort((a, b) => a - b));
  }

  /** Fires the alerts of the thresholds the spend of `subject` has reached (each once, across instances). */
  private async fireAlerts(subject: Subject_, windows: readonly SpendWindow[]): Promise<void> {
    const thresholds = this.sortedThresholds();
    for (const w of windows) {
      const window = subject.windows.find((x) => x.name === w.name);
      if (!window) continue;
      for (const t of thresholds) {
        if (w.used < t * w.limit) break;
        const id = `budget:alert:${subject.scope}:${subject.user !== undefined ? keyPart(subject.user) : '-'}:${w.name}:${w.start}:${t}`;
        if (this.alerted.has(id)) continue;
        const first = await this.store.setIfAbsent(
          id,
          '1',
          Math.max(1, w.start + window.windowMs - Date.now()) + 60_000,
        );
        if (this.alerted.size >= 10_000) this.alerted.clear();
        this.alerted.add(id);
        if (!first) continue;
        const event: BudgetAlertEvent = {
          scope: subject.scope,
          user: subject.user,
          period: w.name as 'day' | 'month',
          threshold: t,
          spentUsd: w.used / MICRO,
          limitUsd: w.limit / MICRO,
          periodStart: new Date(w.start).toISOString(),
        };
        this.logger.warn({ msg: 'budget alert', ...event });
        this.alertSubject.next(event);
        await this.options.budgets.onAlert?.(event);
      }
    }
  }

  /**
   * Reserves `maxCostUsd` against the budgets of `user` (when given) and of the project, as `reserve` does
   * for one call, for work priced outside the call pipeline (a Batch API batch: the sum of its requests'
   * highest costs at the batch price). `null`: `model` has no price, refused while a budget applies and
   * `budgets.unpricedModels` is `reject`, else reserved at $0. Settle with the real cost (`costUsd`).
   * @throws BudgetExceededException (429), UnpricedModelException, StorageUnavailableException (503).
   */
  async reserveCost(
    user: string | undefined,
    maxCostUsd: number | null,
    model: string,
  ): Promise<CallReservation | void> {
    const subjects = await this.subjects(user, new Date());
    if (subjects.length === 0) return;
    if (maxCostUsd === null && this.options.budgets.unpricedModels === 'reject')
      throw new UnpricedModelException(model);
    return holdOne(this.store, await this.planHold(subjects, maxCostUsd ?? 0));
  }

  /**
   * The holds of `maxCost` (USD) on every subject: the project's taken now on this instance's lease (or,
   * near its limit, per call on the counter), the others as store consumes the pipeline runs with the
   * token limits' in one operation. A refusal gives back every hold.
   */
  private async planHold(subjects: Subject_[], maxCost: number): Promise<HoldPlan> {
    const reserved = toMicro(maxCost);
    /** Holds taken before the joint operation (project lease, per-call project hold). */
    const pre: Held[] = [];
    const onOps: Subject_[] = [];
    const counter = (subject: Subject_, windows: readonly WindowState[]): Held => {
      const refs = windows.map((w) => ({ name: w.name, start: w.start }));
      return { subject, adjust: (d) => this.store.adjust(subject.key, refs, d) };
    };
    for (const subject of subjects) {
      if (subject.scope === 'project' && this.leases) {
        const lease = await this.leases.hold(subject.windows, reserved);
        if (lease) {
          pre.push({ subject, adjust: (d) => lease.adjust(d), leased: true });
          continue;
        }
        // near the limit (or no lease to be had): reserve this call on the counter itself
        let r;
        try {
          r = await this.leases.holdPerCall(subject.windows, reserved);
        } catch {
          r = undefined; // the store fails: the joint consume answers with the failure policy
        }
        if (r) {
          if (r.ok) {
            pre.push(counter(subject, r.windows));
            continue;
          }
          this.giveBack(pre, reserved);
          throw this.refused(subject, r.blockedBy!);
        }
      }
      onOps.push(subject);
    }
    return {
      ops: onOps.map((subject) => ({ key: subject.key, windows: subject.windows, cost: reserved })),
      abort: () => this.giveBack(pre, reserved),
      refusal: (i, result) => this.refused(onOps[i], result.blockedBy!),
      admitted: (results) => {
        const refs = results.map((r) => r.windows.map((w) => ({ name: w.name, start: w.start })));
        const ops = (delta: number, read: boolean): AdjustOp[] =>
          onOps.map((subject, i) => ({
            key: subject.key,
            windows: refs[i],
            delta,
            read,
            ...(results[i].degraded ? { degraded: true } : {}),
          }));
        return {
          settle: (s: SettledCall) => {
            const actual =
              (s.costUsd !== undefined ? s.costUsd : this.pricing.cost(s.model, s.usage)) ?? maxCost;
            const delta = toMicro(actual) - reserved;
            if (pre.length) this.track(this.adjustAll(pre, delta).then(() => this.checkAlerts(pre)));
            return ops(delta, true);
          },
          release: () => {
            this.giveBack(pre, reserved);
            return ops(-reserved, false);
          },
          settled: (counts) =>
            onOps.forEach((subject, i) => {
              const used = counts[i];
              if (!used || used.some((u) => u === undefined)) {
                // a store that reports no counts: read the spend
                this.track(this.checkAlerts([counter(subject, results[i].windows)]));
                return;
              }
              const windows = results[i].windows.map((w, j) => ({
                name: w.name,
                limit: w.limit,
                used: used[j]!,
                start: w.start,
              }));
              if (this.alertDue(windows)) this.track(this.fireAlerts(subject, windows));
            }),
        };
      },
    };
  }

  /** Gives back holds taken before the joint operation (off the request path, errors logged). */
  private giveBack(held: Held[], reserved: number): void {
    if (held.length) this.track(this.adjustAll(held, -reserved));
  }

  /** The refusal of `subject`'s budget by window `w`: counted, `retry-after` set. */
  private refused(subject: Subject_, w: WindowState): BudgetExceededException {
    const period = w.name as 'day' | 'month';
    this.metrics.budgetRejected(subject.scope, period);
    const windowMs = subject.windows.find((x) => x.name === w.name)!.windowMs;
    const ex = new BudgetExceededException(
      subject.scope,
      period,
      w.limit / MICRO,
      new Date(w.start + windowMs),
    );
    RequestContextStore.setHeader('retry-after', ex.headers['retry-after']);
    return ex;
  }
}
