/** One counting window of a limit. */
export interface WindowLimit {
  /** Name of the window, part of the key and of the message when it blocks (`minute`, `day`, ...). */
  name: string;
  /** Most units (requests, tokens, nano-USD) the window admits. */
  limit: number;
  /** Length of the window (ms). A window starts at the first use after the previous one ended. */
  windowMs: number;
  /**
   * Fixed start of the window (epoch ms), for calendar periods (the UTC day or month): when the stored
   * window started elsewhere, it is reset to this one.
   */
  startAt?: number;
}

/** State of one window after a `consume`. */
export interface WindowState {
  name: string;
  limit: number;
  /** Units used in the window, this call's included when it was admitted. */
  used: number;
  remaining: number;
  /** Start of the window (epoch ms): identifies it for `adjust`. */
  start: number;
  /** Time until the window ends (ms). */
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

/**
 * The one storage interface for state shared between app instances: limits, budgets, usage, caches.
 * Every operation is atomic and costs O(1) (one round trip on Redis). Keys are given without the
 * store's prefix. A key that holds a `{hash tag}` (see `subjectKey`) keeps it; any other key is wrapped
 * whole in one, so Redis Cluster keeps one key's windows in one slot.
 */
export interface OpenAIStore {
  /** `memory`, `redis`, or the name of a custom store. */
  readonly kind: string;
  /**
   * Adds `cost` to every window of `key` if all of them have room (`used + cost <= limit`); otherwise
   * adds nothing. Expired windows restart at zero.
   */
  consume(key: string, windows: readonly WindowLimit[], cost: number): Promise<ConsumeResult>;
  /**
   * Adds `delta` (may be negative) to the given windows of `key`, only where the stored window is still
   * the one referenced (a window that rolled over is left alone). Counts never go below zero.
   */
  adjust(key: string, windows: readonly WindowRef[], delta: number): Promise<void>;
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
  return /^[A-Za-z0-9._@-]*$/.test(part) ? part : encodeURIComponent(part).replace(/\./g, '%2E');
}

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
