import { randomBytes } from 'node:crypto';
import type { ProjectLeaseOptions } from '../options/openai-module-options.interface.js';
import type {
  BudgetLeaseOp,
  BudgetLeaseResult,
  BudgetLeaseWindow,
  OpenAIStore,
  WindowLimit,
} from '../storage/openai-store.interface.js';

/** A lease this instance holds, in micro-USD. */
interface Lease {
  id: string;
  /** The windows (with the periods) the lease was taken in. */
  windows: WindowLimit[];
  /** Counted whole on the project counter while the lease lives. */
  granted: number;
  /** What the store allows this instance to use of it (acknowledged): never more is used. */
  cap: number;
  /** Holds of calls in flight plus the settled cost of the calls it served. */
  used: number;
  /** Local time after which the lease is not used any more (its expiry in the store is later). */
  deadline: number;
  raising?: Promise<void>;
  /** Set when the return was sent: later settlements go to the counter itself. */
  returned: boolean;
}

/** A call's hold on a lease: `adjust` adds the settlement's difference (negative: gives back). */
export interface LeaseHold {
  adjust(delta: number): Promise<void>;
}

/** Store operations of the leases, by kind (what a call costs the store, for tests and the bench). */
export interface LeaseOpCounts {
  take: number;
  raise: number;
  return: number;
  hold: number;
  peek: number;
  adjust: number;
}

/**
 * The project budget served from leases (see `ProjectLeaseOptions`). All amounts in micro-USD.
 *
 * Invariant (why the project is never overspent): the project counter holds every live lease whole
 * (`granted`), and this instance never uses more of a lease than the `cap` the store acknowledged. An
 * expired lease gives back `granted - cap` (the store's cap, at least the acknowledged one), a returned
 * lease `granted - used` (`cap - used` after its expiry), and calls still in flight when their lease is
 * returned settle on the counter itself. So the counter never drops below what was really used.
 */
export class ProjectLeases {
  private active?: Lease;
  private acquiring?: Promise<void>;
  private perCallUntil = 0;
  private seq = 0;
  private closed = false;
  private readonly prefix = randomBytes(6).toString('hex');
  private readonly pending = new Set<Promise<unknown>>();
  /** Store operations made for the project budget, by kind. */
  readonly ops: LeaseOpCounts = { take: 0, raise: 0, return: 0, hold: 0, peek: 0, adjust: 0 };

  constructor(
    private readonly store: OpenAIStore,
    private readonly key: string,
    private readonly options: Required<ProjectLeaseOptions> & { instances: number },
    /** Called with the windows after each lease operation (budget alerts). */
    private readonly onState: (windows: BudgetLeaseWindow[]) => void,
    private readonly onError: (what: string, err: unknown) => void,
  ) {}

  /** True when the store can hold leases and they are enabled. */
  static supported(store: OpenAIStore, options: Required<ProjectLeaseOptions>): boolean {
    return options.enabled && store.kind !== 'memory' && typeof store.budgetLease === 'function';
  }

  private op(windows: readonly WindowLimit[], op: BudgetLeaseOp): Promise<BudgetLeaseResult> {
    this.ops[op.op]++;
    return this.store.budgetLease!(this.key, windows, op);
  }

  private track<T>(p: Promise<T>): void {
    const q = p.catch((err: unknown) => this.onError('project budget lease', err));
    this.pending.add(q);
    void q.finally(() => this.pending.delete(q));
  }

  /** Waits for lease operations in flight (returns, background cap raises). */
  async flush(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  private usable(l: Lease, windows: readonly WindowLimit[], now: number): boolean {
    return (
      !l.returned &&
      now < l.deadline &&
      l.windows.length === windows.length &&
      l.windows.every((w, i) => w.name === windows[i].name && w.startAt === windows[i].startAt)
    );
  }

  private step(l: Lease): number {
    return Math.max(1, Math.ceil(l.granted / 4));
  }

  /**
   * Holds `cost` on this instance's lease, taking or growing one when needed. Undefined: no lease can
   * serve the call (near the limit, leases disabled by shutdown, the store failing): reserve it per call.
   */
  async hold(windows: WindowLimit[], cost: number): Promise<LeaseHold | undefined> {
    for (let attempt = 0; attempt < 4; attempt++) {
      const now = Date.now();
      const l = this.active;
      if (l && this.usable(l, windows, now)) {
        if (l.used + cost <= l.cap) {
          l.used += cost;
          // ask for more before it is needed, so calls rarely wait for the store
          if (l.cap < l.granted && l.cap - l.used < this.step(l) / 2)
            this.track(this.raise(l, l.used + this.step(l)));
          return this.handle(l);
        }
        if (l.used + cost <= l.granted) {
          await this.raise(l, l.used + cost + this.step(l));
          continue;
        }
      }
      if (l) this.retire(l);
      if (this.closed || now < this.perCallUntil) return undefined;
      await (this.acquiring ??= this.take(windows, cost).finally(() => (this.acquiring = undefined)));
      if (!this.active) return undefined;
    }
    return undefined;
  }

  private handle(l: Lease): LeaseHold {
    return {
      adjust: async (delta: number) => {
        if (delta === 0) return;
        if (!l.returned) {
          const next = l.used + delta;
          if (next <= l.cap) {
            l.used = Math.max(0, next);
            return;
          }
          // the real cost is above the hold and the lease's cap: the excess is counted on the counter
          l.used = l.cap;
          delta = next - l.cap;
        }
        // the lease was returned with this call's hold counted as used: settle on the counter
        this.ops.adjust++;
        await this.store.adjust(
          this.key,
          l.windows.map((w) => ({ name: w.name, start: w.startAt! })),
          delta,
        );
      },
    };
  }

  private async take(windows: WindowLimit[], cost: number): Promise<void> {
    const id = `${this.prefix}:${++this.seq}`;
    const sentAt = Date.now();
    const micro = (usd: number) => Math.round(usd * 1e6);
    try {
      const r = await this.op(windows, {
        op: 'take',
        id,
        ttlMs: this.options.ttlMs,
        maxAmount: micro(this.options.maxUsd),
        divisor: Math.max(1, this.options.instances) * 4,
        minAmount: cost,
        threshold: micro(this.options.perCallBelowUsd),
      });
      this.onState(r.windows);
      if (r.ok && !this.closed) {
        this.active = {
          id,
          windows,
          granted: r.granted,
          cap: r.cap,
          used: 0,
          deadline: sentAt + this.options.ttlMs,
          returned: false,
        };
      } else {
        if (r.ok) this.send(id, windows, 0, r.cap);
        // near the limit: per call for a while (each per-call hold also reclaims expired leases)
        this.perCallUntil = Date.now() + Math.min(1_000, this.options.ttlMs);
      }
    } catch (err) {
      this.onError('taking a project budget lease', err);
      this.perCallUntil = Date.now() + Math.min(1_000, this.options.ttlMs);
    }
  }

  private raise(l: Lease, want: number): Promise<void> {
    return (l.raising ??= (async () => {
      const sentAt = Date.now();
      try {
        const r = await this.op(l.windows, {
          op: 'raise',
          id: l.id,
          ttlMs: this.options.ttlMs,
          cap: Math.min(l.granted, want),
          used: l.used,
        });
        if (!r.ok) {
          // reclaimed at its expiry: all but its cap went back to the project
          this.retire(l);
          return;
        }
        this.onState(r.windows);
        if (!l.returned) {
          l.cap = Math.max(l.cap, Math.min(r.cap, l.granted));
          l.deadline = sentAt + this.options.ttlMs;
        }
      } catch (err) {
        // the store fails: keep serving up to the cap already granted (the lease stays counted whole);
        // past it, calls reserve per call and the store's failure policy answers
        this.onError('raising a project budget lease', err);
      } finally {
        l.raising = undefined;
      }
    })());
  }

  /** Stops using `l` and returns what it did not use (calls still in flight then settle on the counter). */
  private retire(l: Lease): void {
    if (this.active === l) this.active = undefined;
    if (l.returned) return;
    l.returned = true;
    this.send(l.id, l.windows, l.used, l.cap);
  }

  private send(id: string, windows: WindowLimit[], used: number, cap: number): void {
    this.track(this.op(windows, { op: 'return', id, used, cap }).then((r) => this.onState(r.windows)));
  }

  /**
   * Reports this instance's use of its lease (so the project's spend is current) and reads the
   * project windows: `used - leased` is the spend (holds of calls in flight included).
   */
  async read(windows: WindowLimit[]): Promise<BudgetLeaseResult> {
    const l = this.active;
    if (l && this.usable(l, windows, Date.now())) {
      const r = await this.op(l.windows, {
        op: 'raise',
        id: l.id,
        ttlMs: this.options.ttlMs,
        cap: l.cap,
        used: l.used,
      });
      if (r.ok) return r;
      this.retire(l);
    }
    return this.op(windows, { op: 'peek' });
  }

  /** A per-call reservation on the counter (reclaiming expired leases first). */
  holdPerCall(windows: WindowLimit[], cost: number): Promise<BudgetLeaseResult> {
    return this.op(windows, { op: 'hold', cost });
  }

  /** Returns the lease (shutdown); later calls reserve per call. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.acquiring) await this.acquiring;
    if (this.active) this.retire(this.active);
    await this.flush();
  }
}
