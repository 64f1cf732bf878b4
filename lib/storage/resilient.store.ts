import { Logger } from '@nestjs/common';
import { MemoryStore } from './memory.store.js';
import type { ClusterHealth } from './redis-cluster.js';
import { adjustAll, consumeAll } from './multi-key.js';
import type {
  AdjustManyResult,
  AdjustOp,
  BreakerAdmission,
  BreakerReport,
  ConsumeManyResult,
  ConsumeOp,
  ConsumeResult,
  SlotResult,
  OpenAIStore,
  StorageFailurePolicy,
  WindowLimit,
  WindowRef,
  WindowState,
} from './openai-store.interface.js';

/** Health of the shared store as `/health` and metrics report it. */
export interface StoreHealth {
  kind: string;
  /** False while the primary store fails. */
  up: boolean;
  /** The failure policy in force while it is down. */
  policy: StorageFailurePolicy;
  /** Number of transitions to the degraded state since start. */
  outages: number;
  /** On a Redis Cluster: `cluster_state` and the masters known to be down. */
  cluster?: ClusterHealth;
}

/**
 * A primary store that knows its own health (a Redis Cluster: per-master state, `cluster_state`), so
 * the degraded state follows it instead of each operation's outcome: with one master down, operations
 * on the others succeed and must not flip the state back and forth.
 */
export interface HealthReportingStore {
  /** False while part of the store cannot serve. */
  readonly healthy: boolean;
  /** Set by `ResilientStore`: called on each change of `healthy`. */
  onHealthChange?: (healthy: boolean, reason: string) => void;
  clusterHealth?(): ClusterHealth | undefined;
}

/** The state of windows admitted by `fail-open` while the store is down: nothing counted (start -1). */
function uncounted(windows: readonly WindowLimit[]): WindowState[] {
  return windows.map((w) => ({
    name: w.name,
    limit: w.limit,
    used: 0,
    remaining: w.limit,
    start: -1,
    resetMs: w.windowMs,
  }));
}

/** Thrown (as a 503 by the guards and hooks) when the store is down and the policy is `fail-closed`. */
export class StoreDegradedError extends Error {
  constructor(cause?: unknown) {
    super('Shared limit store unavailable', { cause });
    this.name = 'StoreDegradedError';
  }
}

/**
 * Applies the failure policy around a primary (Redis) store. While it fails, operations follow the
 * policy; the first failure and the recovery are each logged once. Recovery needs no restart: while
 * degraded, each operation tries the primary again as soon as its client reports ready.
 *
 * A primary that reports its own health (`HealthReportingStore`, a Redis Cluster) drives the degraded
 * state: it turns degraded when a master goes down and back when every master answers, one log line
 * and one metric change each, while each operation still gets the policy's answer only when its own
 * keys cannot be served.
 */
export class ResilientStore implements OpenAIStore {
  readonly kind: string;
  private readonly logger = new Logger('OpenAIStore');
  private readonly fallback?: MemoryStore;
  private down = false;
  private outages = 0;
  /** Called on each transition (true: degraded). Metrics subscribe here. */
  onTransition?: (degraded: boolean) => void;

  constructor(
    private readonly primary: OpenAIStore & { ready?: boolean } & Partial<HealthReportingStore>,
    readonly policy: StorageFailurePolicy,
    private readonly instances = 1,
  ) {
    this.kind = primary.kind;
    if (policy === 'memory') this.fallback = new MemoryStore();
    if (typeof primary.healthy === 'boolean')
      primary.onHealthChange = (healthy, reason) =>
        healthy ? this.markUp() : this.markDown(new Error(reason));
  }

  health(): StoreHealth {
    const cluster = this.primary.clusterHealth?.();
    return {
      kind: this.kind,
      up: !this.down,
      policy: this.policy,
      outages: this.outages,
      ...(cluster ? { cluster } : {}),
    };
  }

  private markDown(err: unknown): void {
    if (this.down) return;
    this.down = true;
    this.outages++;
    this.logger.error(
      `${this.kind} store unavailable, policy "${this.policy}" in force: ${(err as Error)?.message ?? String(err)}`,
    );
    this.onTransition?.(true);
  }

  private markUp(): void {
    if (!this.down) return;
    this.down = false;
    this.logger.log(`${this.kind} store available again`);
    this.onTransition?.(false);
  }

  /** Runs on the primary; on failure applies the policy through `degraded`. */
  private async attempt<T>(op: (s: OpenAIStore) => Promise<T>, degraded: () => Promise<T>): Promise<T> {
    if (this.down && this.primary.ready === false) return degraded();
    try {
      const v = await op(this.primary);
      if (this.primary.healthy !== false) this.markUp();
      return v;
    } catch (err) {
      this.markDown(err);
      return degraded();
    }
  }

  /** Windows of the memory fallback: each limit divided by `instances` (at least 1). */
  private scaled(windows: readonly WindowLimit[]): WindowLimit[] {
    return windows.map((w) => ({ ...w, limit: Math.max(1, Math.ceil(w.limit / this.instances)) }));
  }

  private fail(): never {
    throw new StoreDegradedError();
  }

  consume(key: string, windows: readonly WindowLimit[], cost: number): Promise<ConsumeResult> {
    return this.attempt(
      (s) => s.consume(key, windows, cost),
      async () => {
        if (this.policy === 'fail-closed') this.fail();
        if (this.policy === 'fail-open') {
          return { allowed: true, degraded: true, windows: uncounted(windows) };
        }
        return { ...(await this.fallback!.consume(key, this.scaled(windows), cost)), degraded: true };
      },
    );
  }

  /** Several consumes as one operation (the primary's, else one per key); the policy when it fails. */
  consumeMany(ops: readonly ConsumeOp[]): Promise<ConsumeManyResult> {
    return this.attempt(
      (s) => consumeAll(s, ops),
      async (): Promise<ConsumeManyResult> => {
        if (this.policy === 'fail-closed') this.fail();
        if (this.policy === 'fail-open') {
          return {
            allowed: true,
            degraded: true,
            results: ops.map(({ windows }) => ({
              allowed: true,
              degraded: true,
              windows: uncounted(windows),
            })),
          };
        }
        const scaled = ops.map((op) => ({ ...op, windows: this.scaled(op.windows) }));
        const r = await this.fallback!.consumeMany(scaled);
        // each result marked, so that its settlement (`AdjustOp.degraded`) comes back to the fallback
        return { ...r, results: r.results.map((x) => ({ ...x, degraded: true })), degraded: true };
      },
    );
  }

  /**
   * Several adjusts as one operation, with the counts after them; while degraded, on the fallback. An op
   * settling a hold the failure policy answered (`degraded`) goes where that hold was taken: the fallback
   * (nowhere under fail-open), even once the primary is back: its counters never had the hold.
   */
  async adjustMany(ops: readonly AdjustOp[]): Promise<AdjustManyResult> {
    if (!ops.some((op) => op.degraded)) return this.adjustOnPrimary(ops);
    const taken = ops.filter((op) => !op.degraded);
    const degraded = ops.filter((op) => op.degraded);
    const [primary, fallback] = await Promise.all([
      taken.length ? this.adjustOnPrimary(taken) : Promise.resolve([]),
      this.fallback
        ? this.fallback.adjustMany(degraded)
        : Promise.resolve(degraded.map((op) => op.windows.map(() => undefined))),
    ]);
    let i = 0;
    let j = 0;
    return ops.map((op) => (op.degraded ? fallback[j++] : primary[i++]));
  }

  private adjustOnPrimary(ops: readonly AdjustOp[]): Promise<AdjustManyResult> {
    return this.attempt(
      (s) => adjustAll(s, ops),
      async () =>
        this.fallback ? this.fallback.adjustMany(ops) : ops.map((op) => op.windows.map(() => undefined)),
    );
  }

  adjust(key: string, windows: readonly WindowRef[], delta: number): Promise<void> {
    // A window taken while degraded has start -1 (fail-open) or lives in the fallback.
    return this.attempt(
      (s) => s.adjust(key, windows, delta),
      async () => (this.fallback ? this.fallback.adjust(key, windows, delta) : undefined),
    );
  }

  incrementFields(key: string, fields: Readonly<Record<string, number>>, ttlMs: number): Promise<void> {
    return this.attempt(
      (s) => s.incrementFields(key, fields, ttlMs),
      async () =>
        this.fallback
          ? this.fallback.incrementFields(key, fields, ttlMs)
          : this.policy === 'fail-closed'
            ? this.fail()
            : undefined,
    );
  }

  getFields(key: string): Promise<Record<string, number>> {
    return this.attempt(
      (s) => s.getFields(key),
      async () =>
        this.fallback ? this.fallback.getFields(key) : this.policy === 'fail-closed' ? this.fail() : {},
    );
  }

  get(key: string): Promise<string | undefined> {
    return this.attempt(
      (s) => s.get(key),
      async () => (this.fallback ? this.fallback.get(key) : undefined),
    );
  }

  set(key: string, value: string, ttlMs: number): Promise<void> {
    return this.attempt(
      (s) => s.set(key, value, ttlMs),
      async () => (this.fallback ? this.fallback.set(key, value, ttlMs) : undefined),
    );
  }

  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    return this.attempt(
      (s) => s.setIfAbsent(key, value, ttlMs),
      async () =>
        this.fallback ? this.fallback.setIfAbsent(key, value, ttlMs) : this.policy === 'fail-open',
    );
  }

  async ping(): Promise<void> {
    try {
      await this.primary.ping();
      if (this.primary.healthy !== false) this.markUp();
    } catch (err) {
      this.markDown(err);
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.fallback?.close();
    await this.primary.close();
  }

  // High availability: while the store is down an in-flight cap and a breaker follow the policy
  // (`memory`: this instance's own, the cap divided by `instances`); `fail-open` admits; `fail-closed`
  // refuses slots (503) and lets breakers admit (a breaker must not stop calls for lack of a store).
  acquireSlot(key: string, id: string, limit: number, ttlMs: number): Promise<SlotResult> {
    return this.attempt(
      (s) => s.acquireSlot(key, id, limit, ttlMs),
      async () => {
        if (this.policy === 'fail-closed') this.fail();
        if (this.policy === 'fail-open') return { acquired: true, held: 0, retryAfterMs: 0 };
        return this.fallback!.acquireSlot(key, id, Math.max(1, Math.ceil(limit / this.instances)), ttlMs);
      },
    );
  }

  releaseSlot(key: string, id: string): Promise<void> {
    return this.attempt(
      (s) => s.releaseSlot(key, id),
      async () => this.fallback?.releaseSlot(key, id),
    );
  }

  breakerAdmit(key: string, probeLeaseMs: number): Promise<BreakerAdmission> {
    return this.attempt(
      (s) => s.breakerAdmit(key, probeLeaseMs),
      async () =>
        this.fallback
          ? this.fallback.breakerAdmit(key, probeLeaseMs)
          : { state: 'closed', allowed: true, probe: false, failures: 0, retryAfterMs: 0, changed: false },
    );
  }

  breakerReport(
    key: string,
    ok: boolean,
    threshold: number,
    cooldownMs: number,
    probe: boolean,
  ): Promise<BreakerReport> {
    return this.attempt(
      (s) => s.breakerReport(key, ok, threshold, cooldownMs, probe),
      async () =>
        this.fallback
          ? this.fallback.breakerReport(key, ok, threshold, cooldownMs, probe)
          : { state: 'closed', from: 'closed', changed: false },
    );
  }
  private leaseOp?: OpenAIStore['budgetLease'];

  /**
   * Budget leases, when the primary has them. While the store is down they fail (`StoreDegradedError`)
   * whatever the policy: `BudgetService` then reserves the call on the budget's own key with `consume`,
   * where the policy applies.
   */
  get budgetLease(): OpenAIStore['budgetLease'] {
    if (!this.primary.budgetLease) return undefined;
    return (this.leaseOp ??= (key, windows, op) =>
      this.attempt(
        (s) => s.budgetLease!(key, windows, op),
        async () => {
          throw new StoreDegradedError();
        },
      ));
  }

  // State broadcast and breaker reads (optional; see OpenAIStore): the primary's, when it has them.
  // While the store is down a publish is dropped and a read fails: the breaker and pacing views re-sync
  // once it is back (the subscription, on a connection of its own, resumes by itself).
  get publish(): OpenAIStore['publish'] {
    if (!this.primary.publish) return undefined;
    return (channel, message) =>
      this.attempt(
        (s) => s.publish!(channel, message),
        async () => undefined,
      );
  }

  get subscribe(): OpenAIStore['subscribe'] {
    return this.primary.subscribe?.bind(this.primary);
  }

  get breakerPeek(): OpenAIStore['breakerPeek'] {
    if (!this.primary.breakerPeek) return undefined;
    return (key) =>
      this.attempt(
        (s) => s.breakerPeek!(key),
        async () => {
          throw new StoreDegradedError();
        },
      );
  }
}
