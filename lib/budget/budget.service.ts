import { Inject, Injectable, Logger } from '@nestjs/common';
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
  type ConsumeResult,
  type OpenAIStore,
  type WindowLimit,
} from '../storage/openai-store.interface.js';
import { StoreDegradedError } from '../storage/resilient.store.js';
import { StorageUnavailableException, storageUnavailable } from '../throttling/rate-limit.exceptions.js';
import type { BudgetAlertEvent } from './budget-alert.event.js';
import { BudgetExceededException, UnpricedModelException } from './budget.exceptions.js';

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
export class BudgetService implements OpenAICallHook {
  private readonly logger = new Logger('OpenAIBudget');
  private readonly alertSubject = new Subject<BudgetAlertEvent>();
  /** Budget alerts, as they fire on this instance. */
  readonly alerts$: Observable<BudgetAlertEvent> = this.alertSubject.asObservable();
  private readonly pending = new Set<Promise<void>>();

  constructor(
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    private readonly pricing: PricingService,
    private readonly metrics: OpenAIMetricsService,
  ) {}

  /** The spend limit of `user` (its own, else the configured per-user one). */
  async userLimit(user: string): Promise<SpendLimit> {
    return (await this.options.budgets.userLimits?.(user)) ?? this.options.budgets.user;
  }

  private async subjects(user: string | undefined, now: Date): Promise<Subject_[]> {
    const out: Subject_[] = [];
    if (user !== undefined) {
      const windows = budgetWindows(await this.userLimit(user), now);
      if (windows.length) out.push({ scope: 'user', user, key: subjectKey(user, 'budget'), windows });
    }
    const project = budgetWindows(this.options.budgets.project, now);
    if (project.length) out.push({ scope: 'project', key: 'budget:project', windows: project });
    return out;
  }

  async reserve(call: UpstreamCall): Promise<CallReservation | void> {
    if (call.endpoint === 'moderations') return;
    const now = new Date();
    const subjects = await this.subjects(call.user, now);
    if (subjects.length === 0) return;
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
    return this.hold(subjects, maxCost);
  }

  /** Budget state of `user` (or of the project when `user` is null), per period that has a limit. */
  async status(user: string | null, now = new Date()): Promise<BudgetStatus[]> {
    const subjects = await this.subjects(user ?? undefined, now);
    const subject = subjects.find((s) => (user === null ? s.scope === 'project' : s.scope === 'user'));
    if (!subject) return [];
    const peek = await this.store.consume(subject.key, subject.windows, 0).catch(storageUnavailable);
    return peek.windows.map((w) => ({
      period: w.name as 'day' | 'month',
      limit_usd: w.limit / MICRO,
      spent_usd: w.used / MICRO,
      remaining_usd: Math.max(0, w.limit - w.used) / MICRO,
      resets_at: new Date(w.start + subject.windows.find((x) => x.name === w.name)!.windowMs).toISOString(),
    }));
  }

  /** Waits for alert checks in flight. */
  async flush(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  private track(p: Promise<void>): void {
    const q = p.catch((err: unknown) =>
      this.logger.error(`budget alert check failed: ${(err as Error)?.message ?? String(err)}`),
    );
    this.pending.add(q);
    void q.finally(() => this.pending.delete(q));
  }

  private async adjustAll(
    held: Array<{ subject: Subject_; result: ConsumeResult }>,
    delta: number,
  ): Promise<void> {
    if (delta === 0) return;
    await Promise.all(
      held.map(({ subject, result }) =>
        this.store.adjust(
          subject.key,
          result.windows.map((w) => ({ name: w.name, start: w.start })),
          delta,
        ),
      ),
    );
  }

  private async checkAlerts(held: Array<{ subject: Subject_; result: ConsumeResult }>): Promise<void> {
    const thresholds = [...this.options.budgets.alertThresholds].sort((a, b) => a - b);
    for (const { subject } of held) {
      const peek = await this.store.consume(subject.key, subject.windows, 0);
      for (const w of peek.windows) {
        const window = subject.windows.find((x) => x.name === w.name)!;
        for (const t of thresholds) {
          if (w.used < t * w.limit) break;
          const id = `budget:alert:${subject.scope}:${subject.user !== undefined ? keyPart(subject.user) : '-'}:${w.name}:${w.start}:${t}`;
          const first = await this.store.setIfAbsent(
            id,
            '1',
            Math.max(1, w.start + window.windowMs - Date.now()) + 60_000,
          );
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
    return this.hold(subjects, maxCostUsd ?? 0);
  }

  /** Reserves `maxCost` (USD) on every subject at once; a refusal gives back the other holds. */
  private async hold(subjects: Subject_[], maxCost: number): Promise<CallReservation> {
    const reserved = toMicro(maxCost);
    // The user's and the project's budgets are reserved at once; a refusal gives back the other hold.
    const outcomes = await Promise.allSettled(
      subjects.map(async (subject) => ({
        subject,
        result: await this.store.consume(subject.key, subject.windows, reserved),
      })),
    );
    const held = outcomes.flatMap((o) =>
      o.status === 'fulfilled' && o.value.result.allowed ? [o.value] : [],
    );
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    const refused = outcomes.find((o) => o.status === 'fulfilled' && !o.value.result.allowed);
    if (failed || refused) {
      await this.adjustAll(held, -reserved);
      if (failed) {
        if (failed.reason instanceof StoreDegradedError) throw new StorageUnavailableException(failed.reason);
        throw failed.reason;
      }
      const { subject, result } = (
        refused as PromiseFulfilledResult<{ subject: Subject_; result: ConsumeResult }>
      ).value;
      const w = result.blockedBy!;
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
      throw ex;
    }
    let done = false;
    return {
      settle: async (s: SettledCall) => {
        if (done) return;
        done = true;
        const actual = (s.costUsd !== undefined ? s.costUsd : this.pricing.cost(s.model, s.usage)) ?? maxCost;
        await this.adjustAll(held, toMicro(actual) - reserved);
        this.track(this.checkAlerts(held));
      },
      release: async () => {
        if (done) return;
        done = true;
        await this.adjustAll(held, -reserved);
      },
    };
  }
}
