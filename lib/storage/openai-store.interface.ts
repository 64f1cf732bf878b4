import { memoized } from '../utils/bounded-memo.js';

/**
 * One limit of a key: at most `limit` units in any interval of `windowMs`.
 *
 * Without `startAt` the window **slides** (request and token limits): a unit counted at time t is freed at
 * t + `windowMs`, so no interval of that length ever admits more than `limit`, whatever the boundary
 * (no fixed window that admits `limit` at its end and `limit` again at the start of the next one). Each
 * store keeps a log of the counted units, grouping those less than `slotMs(window)` apart (1 ms, or
 * `windowMs / 1000` for windows longer than a second), so a unit is freed up to one slot (0.1% of the
 * window) late, never early. See `sliding-window.ts` for why this is exact and a token bucket or GCRA
 * at the same rate is not.
 *
 * With `startAt` the window is a fixed calendar period (a budget's UTC day or month): it counts from
 * `startAt` for `windowMs` and restarts at zero with the next period.
 */
export interface WindowLimit {
  /** Name of the window, part of the key and of the message when it blocks (`minute`, `day`, ...). */
  name: string;
  /** Most units (requests, tokens, nano-USD) the window admits in any interval of `windowMs`. */
  limit: number;
  /** Length of the window (ms). */
  windowMs: number;
  /**
   * Fixed start of the window (epoch ms), for calendar periods (the UTC day or month): when the stored
   * window started elsewhere, it is reset to this one. Such a window does not slide.
   */
  startAt?: number;
  /**
   * Sliding windows: once a consume is refused because this window has no room, the key is refused by
   * this window for `blockMs` from then (`@nestjs/throttler`'s `blockDuration`), even where units would
   * be freed sooner; a block never shortens the wait the limit itself requires. Unset or 0: a refused
   * key is admitted again as soon as the units it needs are freed.
   */
  blockMs?: number;
}

/** State of one window after a `consume`. */
export interface WindowState {
  name: string;
  limit: number;
  /** Units counted in the window (the last `windowMs`), this call's included when it was admitted. */
  used: number;
  /** Units that may be consumed now (0 while the key is blocked). */
  remaining: number;
  /**
   * Identifies what this call counted, for `adjust`: for a sliding window the id of the log entry its
   * units were counted in (epoch ms), for a calendar window the start of the period.
   */
  start: number;
  /**
   * Time (ms) until the window has more room:
   * - in the window that refused a consume: until that cost fits (and the block, if any, is over) —
   *   the `retry-after`;
   * - otherwise: until the oldest counted unit is freed (0 when nothing is counted); for a calendar
   *   window, until the period ends.
   */
  resetMs: number;
}

/** Outcome of an atomic check-and-consume over several windows. */
export interface ConsumeResult {
  /** True when every window had room: the cost was added to all of them. False: nothing was added. */
  allowed: boolean;
  windows: WindowState[];
  /** The first window that had no room, when refused. */
  blockedBy?: WindowState;
  /** When the store could not be reached and the failure policy decided (see `StorageFailurePolicy`). */
  degraded?: boolean;
}

/** A window consumed earlier, to settle against: name and start, as returned by `consume`. */
export interface WindowRef {
  name: string;
  start: number;
}

/** One consume of a multi-key operation (`OpenAIStore.consumeMany`, `consumeAll`). */
export interface ConsumeOp {
  key: string;
  windows: readonly WindowLimit[];
  /** Units to add to every window of `key` (requests, tokens, micro-USD). */
  cost: number;
}

/** Outcome of a multi-key consume: one result per op, in order. */
export interface ConsumeManyResult {
  /** True when every window of every op had room: all were counted. False: nothing was counted. */
  allowed: boolean;
  /** Per op: its windows (each `allowed` equals the whole operation's); `blockedBy` on the op that refused. */
  results: ConsumeResult[];
  /** Index of the first op that refused. */
  refused?: number;
  /** When the store could not be reached and the failure policy decided. */
  degraded?: boolean;
}

/** One adjust of a multi-key operation (`OpenAIStore.adjustMany`, `adjustAll`). */
export interface AdjustOp {
  key: string;
  windows: readonly WindowRef[];
  /** Units to add (negative: give back) to what an earlier consume counted. */
  delta: number;
  /** Read the windows' counts back even when `delta` is 0 (a settlement that needs them for alerts). */
  read?: boolean;
  /**
   * The consume it settles was answered by the failure policy (its result was `degraded`): a store in
   * front of a failing one (`ResilientStore`) settles it where it was taken (its in-memory fallback; nowhere
   * under `fail-open`), not on the primary once it is back, whose counters never had it. Other stores
   * ignore it.
   */
  degraded?: boolean;
}

/**
 * Counts after a multi-key adjust, per op and window (in order): the units counted in the window (a
 * calendar window: its period's count, holds of calls in flight included), or `undefined` when the
 * referenced period or log entry is gone (or the store does not report counts).
 */
export type AdjustManyResult = Array<Array<number | undefined>>;

/**
 * The one storage interface for state shared between app instances: limits, budgets, usage, caches.
 * Every operation is atomic and costs O(1) (amortized, for sliding windows; one round trip on Redis). Keys are given without the
 * store's prefix. A key that holds a `{hash tag}` (see `subjectKey`) keeps it; any other key is wrapped
 * whole in one, so Redis Cluster keeps one key's windows in one slot.
 */
export interface OpenAIStore {
  /** `memory`, `redis`, or the name of a custom store. */
  readonly kind: string;
  /**
   * Adds `cost` to every window of `key` if all of them have room (`used + cost <= limit`, and none is
   * blocked); otherwise adds nothing (and starts the `blockMs` of the windows without room). Sliding
   * windows count the last `windowMs`; calendar windows restart at zero with the next period. A `cost`
   * of 0 reads the windows without counting.
   */
  consume(key: string, windows: readonly WindowLimit[], cost: number): Promise<ConsumeResult>;
  /**
   * Adds `delta` (may be negative) to what an earlier `consume` counted in the given windows of `key`:
   * in a sliding window to the log entry referenced (units still counted; an entry already freed is
   * left alone), in a calendar window only while it is still the period referenced. Counts never go below
   * zero. Settles a token reservation to the real usage, or gives it back.
   */
  adjust(key: string, windows: readonly WindowRef[], delta: number): Promise<void>;
  /**
   * Optional. Several `consume`s as one atomic operation (one round trip, one Lua script on Redis): every
   * op is counted if all have room, else none is (and the windows without room start their `blockMs`).
   * The ops' keys must be distinct. On a Redis Cluster the keys must share a slot for one script (keys of
   * one user do: `subjectKey`); otherwise the store runs one consume per key and gives back the admitted
   * ones when one refuses. A store without it is used through `consumeAll`, which does the same.
   */
  consumeMany?(ops: readonly ConsumeOp[]): Promise<ConsumeManyResult>;
  /**
   * Optional. Several `adjust`s as one operation (one round trip), returning the windows' counts after it
   * (see `AdjustManyResult`). A store without it is used through `adjustAll` (one `adjust` per op, no counts).
   */
  adjustMany?(ops: readonly AdjustOp[]): Promise<AdjustManyResult>;
  /** Adds to numeric fields of a record kept `ttlMs` after its creation. */
  incrementFields(key: string, fields: Readonly<Record<string, number>>, ttlMs: number): Promise<void>;
  /** The numeric fields of a record (empty when absent). */
  getFields(key: string): Promise<Record<string, number>>;
  /** A string value, or undefined when absent or expired. */
  get(key: string): Promise<string | undefined>;
  /** Stores a string value for `ttlMs`. */
  set(key: string, value: string, ttlMs: number): Promise<void>;
  /** Stores a value only when the key is absent; true when this call stored it. */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  /** Throws when the store cannot serve. */
  ping(): Promise<void>;
  /** Releases what the store created (timers, a Redis client it opened). */
  close(): Promise<void>;
  /**
   * Optional. Leases of a calendar budget (the project budget, see `BudgetService`), one atomic operation
   * on the windows of `key` and its lease records. A store without it reserves every call on `key`.
   * Expired leases are reclaimed first (all but the cap their holder was allowed to use).
   */
  budgetLease?(key: string, windows: readonly WindowLimit[], op: BudgetLeaseOp): Promise<BudgetLeaseResult>;
  // High availability (in-flight slots, circuit breakers): atomic, one Lua script each on Redis.
  /**
   * Takes slot `id` of `key` for `ttlMs` when fewer than `limit` live slots are held (expired slots are
   * dropped first); an id already held is renewed. The in-flight cap per user.
   */
  acquireSlot(key: string, id: string, limit: number, ttlMs: number): Promise<SlotResult>;
  /** Frees slot `id` of `key` (nothing when it is not held). */
  releaseSlot(key: string, id: string): Promise<void>;
  /**
   * Asks a circuit breaker whether a call may go: closed yes; open no until its cool-down ends, when
   * the first caller turns it half-open and holds the one probe for `probeLeaseMs` (a probe that never
   * reports, its instance dead, is replaced after its lease); half-open no while the probe runs.
   */
  breakerAdmit(key: string, probeLeaseMs: number): Promise<BreakerAdmission>;
  /**
   * Reports an attempt's outcome: a success closes the breaker and clears its count; a failure adds one
   * consecutive failure and opens it for `cooldownMs` at `threshold`, and a failed probe reopens it.
   */
  breakerReport(
    key: string,
    ok: boolean,
    threshold: number,
    cooldownMs: number,
    probe: boolean,
  ): Promise<BreakerReport>;

  // State broadcast between instances (optional; the local views of the circuit breakers and of
  // pacing, see CircuitBreakerService and PacingService). A store without them: those views re-read
  // the store at most once per sync interval.
  /**
   * Optional. Sends `message` to every subscriber of `channel` (a name under the store's key prefix),
   * this instance's own included: at most once, not kept (a subscriber not connected then misses it),
   * and not necessarily in order (on a Redis Cluster each PUBLISH may go through another node, which
   * forwards it to every node). On Redis: one PUBLISH.
   */
  publish?(channel: string, message: string): Promise<void>;
  /**
   * Optional. Delivers the messages published on `channel` to `listener.message` until the returned
   * subscription is closed. `lost`: the subscription's connection closed (messages are missed until
   * `resumed`, called once it is subscribed again: re-read the state they would have carried).
   * @throws when the subscription cannot be made.
   */
  subscribe?(
    channel: string,
    listener: { message(message: string): void; lost?(): void; resumed?(): void },
  ): Promise<{ close(): Promise<void> }>;
  /**
   * Optional. A circuit breaker as stored, without changing it (no probe is taken): its state, the
   * consecutive failures counted, and for an open breaker the ms until its cool-down ends (for a
   * half-open one, until its probe's lease ends; 0 when over).
   */
  breakerPeek?(key: string): Promise<Pick<BreakerAdmission, 'state' | 'failures' | 'retryAfterMs'>>;
}

/**
 * What to do when the shared store (Redis) fails:
 * - `fail-closed`: refuse the request with 503;
 * - `fail-open`: admit it without counting;
 * - `memory`: count in this instance's memory with limits divided by `instances`.
 */
export type StorageFailurePolicy = 'fail-closed' | 'fail-open' | 'memory';

/** Escapes characters that would break a `{hash tag}` or a key's separators. */
export function keyPart(part: string): string {
  return memoized(KEY_PARTS, part, 10_000, escapeKeyPart);
}

function escapeKeyPart(part: string): string {
  return /^[A-Za-z0-9._@-]*$/.test(part) ? part : encodeURIComponent(part).replace(/\./g, '%2E');
}

/** Escaped key parts (user IDs, model names), memoized: every request builds several keys of its user. */
const KEY_PARTS = new Map<string, string>();

/**
 * A key in the Redis Cluster slot of one user: every per-user key (request and token windows, budget,
 * usage ledger) carries the hash tag `{u:<user>}`, so the checks of one request touch one master.
 *
 * @example subjectKey('alice', 'rl:tok') // '{u:alice}:rl:tok', stored as 'openai:{u:alice}:rl:tok:minute'
 */
export function subjectKey(user: string, name: string): string {
  return `{u:${keyPart(user)}}:${name}`;
}

/**
 * The key of a request-limit tracker: a `user:<id>` tracker shares that user's tag (`subjectKey`), any
 * other tracker (`ip:<address>`, a custom one) gets a tag of its own.
 */
export function trackerKey(tracker: string, name: string): string {
  return tracker.startsWith('user:') ? subjectKey(tracker.slice(5), name) : `{${keyPart(tracker)}}:${name}`;
}

/** Outcome of `OpenAIStore.acquireSlot`. */
export interface SlotResult {
  /** True when the slot is held (taken now, or already held by this id and its expiry renewed). */
  acquired: boolean;
  /** Live slots of the key, this one included when acquired. */
  held: number;
  /** When refused: time (ms) until the earliest live slot expires (it may be freed sooner). */
  retryAfterMs: number;
}

/** State of a circuit breaker. */
export type BreakerState = 'closed' | 'open' | 'half-open';

/** Outcome of `OpenAIStore.breakerAdmit`. */
export interface BreakerAdmission {
  /** The state after this admission (an open breaker whose cool-down ended turns half-open). */
  state: BreakerState;
  /** True when the caller may send: the breaker is closed, or this caller holds the one probe. */
  allowed: boolean;
  /** True when this caller holds the half-open breaker's probe. */
  probe: boolean;
  /** Consecutive failures counted so far. */
  failures: number;
  /** When not allowed: ms until the cool-down (or the running probe's lease) ends. */
  retryAfterMs: number;
  /** True when this admission changed the state (open -> half-open). */
  changed: boolean;
}

/** Outcome of `OpenAIStore.breakerReport`. */
export interface BreakerReport {
  state: BreakerState;
  /** The state before the report. */
  from: BreakerState;
  /** True when this report changed the state (closed -> open, half-open -> open or closed, open -> closed). */
  changed: boolean;
}

/**
 * One operation of `OpenAIStore.budgetLease` on calendar windows (`startAt` set). A lease record holds
 * `granted` units (counted in the windows while it lives), the `cap` its holder may use of them, the
 * `used` it last reported, and its expiry; an expired record gives back `granted - cap`.
 * - `take`: a new lease `id` of `min(maxAmount, floor(room / divisor))` units (room: the least room of
 *   the windows) and a cap of a quarter of it (at least `minAmount`); refused (nothing counted) when
 *   room < `threshold` or the lease would be under `minAmount`.
 * - `raise`: raises the cap of live lease `id` to `cap` (at most its grant), records `used`, renews
 *   its expiry; refused when the lease is gone.
 * - `return`: ends lease `id`, giving back `granted - used` (when already reclaimed: `cap - used`,
 *   `cap` as its holder knew it). `windows` carry the lease's periods; nothing is given back to a
 *   window that has moved on to another period, and no window is reset.
 * - `hold`: counts `cost` in every window if all have room (a per-call reservation, settled with `adjust`).
 * - `peek`: reads the windows.
 */
export type BudgetLeaseOp =
  | {
      op: 'take';
      id: string;
      ttlMs: number;
      maxAmount: number;
      divisor: number;
      minAmount: number;
      threshold: number;
    }
  | { op: 'raise'; id: string; ttlMs: number; cap: number; used: number }
  | { op: 'return'; id: string; used: number; cap: number }
  | { op: 'hold'; cost: number }
  | { op: 'peek' };

/** A calendar window after a `budgetLease` operation. */
export interface BudgetLeaseWindow extends WindowState {
  /** Units counted for live leases but not (as last reported) used by their holders. */
  leased: number;
}

/** Outcome of `OpenAIStore.budgetLease`. */
export interface BudgetLeaseResult {
  /** False: `take` or `hold` refused, or the lease of `raise` is gone. */
  ok: boolean;
  /** `take` and `raise`: the lease's grant and cap. */
  granted: number;
  cap: number;
  windows: BudgetLeaseWindow[];
  /** `hold`: the first window without room. */
  blockedBy?: BudgetLeaseWindow;
}
