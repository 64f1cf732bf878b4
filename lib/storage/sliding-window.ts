import type { WindowLimit } from './openai-store.interface.js';

/**
 * # Sliding windows: an exact limit at every instant
 *
 * A limit "L units per W ms" must never admit more than L units in **any** interval of length W. A
 * fixed window (count from the window's start, reset to zero at its end) admits L at the end of one
 * window and L at the start of the next: 2L within a few ms (2 per second: hits at 0.90 s, 1.05 s and
 * 1.10 s all pass).
 *
 * **Chosen: a sliding log**, for requests and tokens alike. Each window of a key keeps the units it
 * counted, oldest first, as entries (id, stamp, units), and their total `n`: `id` is when the entry was
 * created, `stamp` when its newest unit was counted. A consume of `cost` at `now`:
 * 1. frees the entries with `stamp <= now - W` (oldest first: each entry is freed once, O(1) amortized);
 * 2. admits when `n + cost <= L` in every window of the key (and none is blocked), then adds `cost` to
 *    the newest entry if it was created less than one slot ago (restamping it `now`), else to a new
 *    entry (id = stamp = `now`), in every window; otherwise changes no count.
 *
 * Why it is exact: a unit counted at time r sits in an entry whose stamp is >= r (a stamp only moves
 * forward, to the time of the unit it adds) and is counted until stamp + W >= r + W, so at every
 * admission at time a, `n` includes every unit admitted in (a - W, a]. Take any interval I of length W
 * and the last admission a in I: all the units admitted in I were admitted in (a - W, a], so they were
 * in `n` (with a's own cost) when a was checked against L. Hence at most L in I. The only slack is the
 * other way: a unit that shares an entry with later ones is freed up to one slot late, never early.
 *
 * Weighted costs (tokens) need nothing more: entries carry units, not hits. `adjust` changes the units
 * of the entry a reservation was counted in (`WindowState.start` is its id): settling to a smaller
 * real usage or releasing lowers it (never below 0) and frees the difference at once; a larger real
 * usage raises it, so later consumes wait for it (what was used is counted, as before).
 *
 * Why not a token bucket / GCRA at rate L/W: a bucket of capacity C admits C at once and then refills,
 * so in an interval of length W it admits C + L·(W/W) = C + L > L units (a full bucket drained at t,
 * then everything that refilled by t + W). It is exact only with C + rate·W <= L, that is by halving
 * the burst or the rate (C = L/2, rate = L/(2W)): not "L per W". GCRA is the same bucket. A two-bucket
 * weighted estimate is an approximation that over-admits after an uneven previous window.
 *
 * **Bounded memory.** Entries are created at least one slot apart, slots being `slotMs(window)` wide:
 * 1 ms for windows up to 1 s, `ceil(W / 1000)` ms above. A live entry was created after now - W - slot,
 * so a window keeps at most `MAX_LOG_ENTRIES + 2` entries, whatever the traffic; on Redis each key
 * expires one window after its newest unit (or when its block ends). The cost is that a unit is freed
 * up to one slot (W / 1000: 60 ms of a minute) late; the newest unit is freed exactly on time.
 *
 * **Blocking.** A window with `blockMs` that refuses a consume blocks the key for `blockMs` from then:
 * it refuses everything until the block ends, then admits again as the log allows (`@nestjs/throttler`'s
 * `blockDuration`, kept even when longer than the window).
 *
 * The memory store and the Redis script (`redis.store.ts`) implement the same rules.
 */
export const MAX_LOG_ENTRIES = 1_000;

/** Width of the slots a sliding window groups its units in (ms). */
export function slotMs(window: Pick<WindowLimit, 'windowMs'>): number {
  return Math.max(1, Math.ceil(window.windowMs / MAX_LOG_ENTRIES));
}

/**
 * The entry a unit counted at `now` goes in: the newest one (`last`, created at `lastId`) while
 * `now < lastId + slot`, else a new entry created at `now`. Its id identifies it for `adjust`.
 */
export function entryId(now: number, lastId: number | undefined, slot: number): number {
  return lastId !== undefined && now < lastId + slot ? lastId : now;
}

/** The sliding log of one window of a key, in memory. */
export class SlidingLog {
  /** Entry ids (when each entry was created), oldest first, from `head`. */
  private readonly ids: number[] = [];
  /** When each entry's newest unit was counted: the entry is freed one window after it. */
  private readonly stamps: number[] = [];
  /** Units per entry. */
  private readonly units: number[] = [];
  private head = 0;
  /** Units counted (sum of `units` from `head`). */
  total = 0;
  /** Blocked until (epoch ms); 0: not blocked. */
  blockedUntil = 0;

  /** Entries held. */
  get length(): number {
    return this.ids.length - this.head;
  }

  /** Id of the newest entry (undefined when empty). */
  get lastId(): number | undefined {
    return this.length ? this.ids[this.ids.length - 1] : undefined;
  }

  /** Stamp of the newest entry (-Infinity when empty). */
  get lastStamp(): number {
    return this.length ? this.stamps[this.stamps.length - 1] : -Infinity;
  }

  /** Stamp of the oldest entry (undefined when empty). */
  get oldestStamp(): number | undefined {
    return this.length ? this.stamps[this.head] : undefined;
  }

  /** Frees the entries stamped at or before `cutoff`; returns how many entries were dropped. */
  prune(cutoff: number): number {
    const from = this.head;
    while (this.head < this.ids.length && this.stamps[this.head] <= cutoff) {
      this.total -= this.units[this.head];
      this.head++;
    }
    const dropped = this.head - from;
    if (this.head === this.ids.length) {
      this.ids.length = 0;
      this.stamps.length = 0;
      this.units.length = 0;
      this.head = 0;
      this.total = 0;
    } else if (this.head >= 64 && this.head * 2 >= this.ids.length) {
      // Compact: each entry is moved at most once per halving, O(1) amortized.
      this.ids.splice(0, this.head);
      this.stamps.splice(0, this.head);
      this.units.splice(0, this.head);
      this.head = 0;
    }
    return dropped;
  }

  /** Counts `cost` at `now` in entry `id` (from `entryId`); returns the entries added (0 or 1). */
  add(id: number, now: number, cost: number): number {
    this.total += cost;
    if (id === this.lastId) {
      const last = this.ids.length - 1;
      this.units[last] += cost;
      this.stamps[last] = Math.max(this.stamps[last], now);
      return 0;
    }
    this.ids.push(id);
    this.stamps.push(now);
    this.units.push(cost);
    return 1;
  }

  /** Adds `delta` to the units of entry `id`, if it is still held (never below 0). */
  adjust(id: number, delta: number): void {
    let lo = this.head;
    let hi = this.ids.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const s = this.ids[mid];
      if (s === id) {
        const next = Math.max(0, this.units[mid] + delta);
        this.total += next - this.units[mid];
        this.units[mid] = next;
        return;
      }
      if (s < id) lo = mid + 1;
      else hi = mid - 1;
    }
  }

  /**
   * When `cost` more units fit under `limit`, as the oldest entries are freed one window after their
   * stamp (epoch ms); `Infinity` when it never fits. Walks only the entries that must be freed.
   */
  fitsAt(cost: number, limit: number, windowMs: number): number {
    const need = this.total + cost - limit;
    if (need <= 0) return -Infinity;
    let freed = 0;
    for (let i = this.head; i < this.ids.length; i++) {
      freed += this.units[i];
      if (freed >= need) return this.stamps[i] + windowMs;
    }
    return Infinity;
  }
}
