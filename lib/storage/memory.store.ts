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
  WindowLimit,
  WindowRef,
  WindowState,
} from './openai-store.interface.js';
import { SlidingLog, entryId, slotMs } from './sliding-window.js';

/** Options of the in-memory store. */
export interface MemoryStoreOptions {
  /**
   * Most keys kept. Past it, the least recently used key is evicted (its counters restart), so memory
   * stays bounded whatever the number of users.
   * @default 200000
   */
  maxKeys?: number;
  /**
   * Interval of the sweep that deletes expired keys (ms). One timer for the store, not one per hit.
   * @default 30000
   */
  sweepIntervalMs?: number;
  /**
   * Most sliding-window log entries kept over all keys (each window keeps at most 1,001, see
   * `sliding-window.ts`). Past it, least recently used keys are evicted as with `maxKeys`.
   * @default 1000000
   */
  maxLogEntries?: number;
  /** The clock (epoch ms). For tests that control time; production uses `Date.now`. */
  now?: () => number;
}

interface Entry {
  /** epoch ms after which the entry is gone */
  exp: number;
  /** The LRU move count when this key was last moved to the newest end (see `MemoryStore.live`). */
  m?: number;
  /** window start (windows) */
  s?: number;
  /** window count (windows) */
  c?: number;
  v?: string;
  f?: Record<string, number>;
  /** sliding window log */
  l?: SlidingLog;
  /** in-flight slots: id -> expiry (epoch ms) */
  z?: Map<string, number>;
}

/** Breaker state kept by the memory store: 0 closed, 1 open, 2 half-open; failures; open until; probe lease until. */
interface BreakerEntry {
  s: 0 | 1 | 2;
  f: number;
  u: number;
  p: number;
}

const BREAKER_STATES = ['closed', 'open', 'half-open'] as const;

/** A consume's windows as read before counting: their states, their logs, the first without room. */
interface Checked {
  states: WindowState[];
  logs: Array<SlidingLog | undefined>;
  blockedBy?: WindowState;
}

/**
 * The default store: exact within one process, O(1) per operation (amortized for sliding windows),
 * bounded (LRU cap on keys and on sliding-log entries), expired keys removed by one periodic sweep. Not
 * shared between instances: use the Redis store for that.
 */
export class MemoryStore implements OpenAIStore {
  readonly kind = 'memory';
  private readonly map = new Map<string, Entry>();
  private readonly maxKeys: number;
  private readonly maxLogEntries: number;
  private readonly sweeper: NodeJS.Timeout;
  private readonly now: () => number;
  /** Sliding-log entries held over all keys. */
  private logEntries = 0;
  /** LRU moves made (see `live`). */
  private moves = 0;

  constructor(options: MemoryStoreOptions = {}) {
    this.maxKeys = options.maxKeys ?? 200_000;
    this.maxLogEntries = options.maxLogEntries ?? 1_000_000;
    this.now = options.now ?? Date.now;
    this.sweeper = setInterval(() => this.sweep(), options.sweepIntervalMs ?? 30_000);
    this.sweeper.unref();
  }

  /** Number of keys held (expired ones not yet swept included). */
  get size(): number {
    return this.map.size;
  }

  /** Sliding-window log entries held over all keys. */
  get entries(): number {
    return this.logEntries;
  }

  /** Deletes every expired key now. */
  sweep(now = this.now()): void {
    for (const [k, e] of this.map) if (e.exp <= now) this.drop(k, e);
  }

  private drop(key: string, e: Entry): void {
    this.map.delete(key);
    if (e.l) this.logEntries -= e.l.length;
  }

  private live(key: string, now: number): Entry | undefined {
    const e = this.map.get(key);
    if (!e) return undefined;
    if (e.exp <= now) {
      this.drop(key, e);
      return undefined;
    }
    // Move to the end: Map order is the LRU order, which matters only once the store is half full. A key
    // moved since the last `map.size / 4` moves is already in the newest part: left in place (an
    // approximate LRU, at a fraction of the Map churn).
    if (
      (this.map.size * 2 > this.maxKeys || this.logEntries * 2 > this.maxLogEntries) &&
      this.moves - (e.m ?? -Infinity) > this.map.size / 4
    ) {
      this.map.delete(key);
      this.map.set(key, e);
      e.m = ++this.moves;
    }
    return e;
  }

  private put(key: string, e: Entry): void {
    const old = this.map.get(key);
    if (old && old !== e) this.drop(key, old);
    this.map.delete(key);
    this.map.set(key, e);
    e.m = ++this.moves;
    this.trim();
  }

  /** Evicts least recently used keys while over `maxKeys` or `maxLogEntries` (never the newest key). */
  private trim(): void {
    while (this.map.size > 1 && (this.map.size > this.maxKeys || this.logEntries > this.maxLogEntries)) {
      const [oldest, e] = this.map.entries().next().value as [string, Entry];
      this.drop(oldest, e);
    }
  }

  async consume(key: string, windows: readonly WindowLimit[], cost: number): Promise<ConsumeResult> {
    const now = this.now();
    const checked = this.check(key, windows, cost, now);
    if (checked.blockedBy) {
      this.refuse(key, windows, cost, checked, now);
      return { allowed: false, windows: checked.states, blockedBy: checked.blockedBy };
    }
    this.apply(key, windows, cost, checked, now);
    this.trim();
    return { allowed: true, windows: checked.states };
  }

  /** The consumes of `ops` as one atomic operation: all counted, or none (see `OpenAIStore.consumeMany`). */
  async consumeMany(ops: readonly ConsumeOp[]): Promise<ConsumeManyResult> {
    const now = this.now();
    const checks = ops.map((op) => this.check(op.key, op.windows, op.cost, now));
    const refused = checks.findIndex((c) => c.blockedBy !== undefined);
    if (refused >= 0) {
      ops.forEach((op, i) => this.refuse(op.key, op.windows, op.cost, checks[i], now));
      const results = checks.map((c) => ({
        allowed: false,
        windows: c.states,
        ...(c.blockedBy ? { blockedBy: c.blockedBy } : {}),
      }));
      return { allowed: false, results, refused };
    }
    ops.forEach((op, i) => this.apply(op.key, op.windows, op.cost, checks[i], now));
    this.trim();
    return { allowed: true, results: checks.map((c) => ({ allowed: true, windows: c.states })) };
  }

  /** Reads the windows of `key` for a consume of `cost` (no count added; old log entries freed). */
  private check(key: string, windows: readonly WindowLimit[], cost: number, now: number): Checked {
    const states: WindowState[] = [];
    const logs: Array<SlidingLog | undefined> = [];
    let blockedBy: WindowState | undefined;
    for (const w of windows) {
      const k = `${key}:${w.name}`;
      const e = this.live(k, now);
      if (w.startAt === undefined) {
        let log = e?.l;
        if (!log) {
          log = new SlidingLog();
          this.put(k, { exp: now, l: log });
        } else this.logEntries -= log.prune(now - w.windowMs);
        logs.push(log);
        const blocked = log.blockedUntil > now;
        const fits = !blocked && log.total + cost <= w.limit;
        const oldest = log.oldestStamp;
        const st: WindowState = {
          name: w.name,
          limit: w.limit,
          used: log.total,
          remaining: blocked ? 0 : Math.max(0, w.limit - log.total),
          start: entryId(now, log.lastId, slotMs(w)),
          resetMs: oldest === undefined ? 0 : Math.max(0, oldest + w.windowMs - now),
        };
        if (!fits) {
          const at = Math.max(blocked ? log.blockedUntil : 0, log.fitsAt(cost, w.limit, w.windowMs));
          st.resetMs = at === Infinity ? w.windowMs : Math.max(0, at - now);
          if (!blockedBy) blockedBy = st;
        }
        states.push(st);
        continue;
      }
      logs.push(undefined);
      let start = e?.s ?? now;
      let used = e?.c ?? 0;
      if (!e || e.s === undefined || start !== w.startAt) {
        start = w.startAt;
        used = 0;
      }
      const st: WindowState = {
        name: w.name,
        limit: w.limit,
        used,
        remaining: Math.max(0, w.limit - used),
        start,
        resetMs: Math.max(0, start + w.windowMs - now),
      };
      if (used + cost > w.limit && !blockedBy) blockedBy = st;
      states.push(st);
    }
    return { states, logs, blockedBy };
  }

  /** A refused consume: nothing is counted; the windows without room start their block. */
  private refuse(key: string, windows: readonly WindowLimit[], cost: number, c: Checked, now: number): void {
    const { states, logs } = c;
    // Nothing is counted; the windows without room start their block.
    for (let i = 0; i < windows.length; i++) {
      const w = windows[i];
      const log = logs[i];
      const st = states[i];
      if (!log || !w.blockMs || w.blockMs <= 0) continue;
      if (log.blockedUntil <= now && log.total + cost <= w.limit) continue;
      if (log.blockedUntil <= now) log.blockedUntil = now + w.blockMs;
      st.remaining = 0;
      st.resetMs = Math.max(st.resetMs, log.blockedUntil - now);
      this.expire(`${key}:${w.name}`, log, w.windowMs);
    }
    for (let i = 0; i < windows.length; i++) {
      const log = logs[i];
      if (log && log.length === 0 && log.blockedUntil <= now) this.map.delete(`${key}:${windows[i].name}`);
    }
  }

  /** An admitted consume: `cost` added to every window. */
  private apply(key: string, windows: readonly WindowLimit[], cost: number, c: Checked, now: number): void {
    const { states, logs } = c;
    for (let i = 0; i < windows.length; i++) {
      const w = windows[i];
      const st = states[i];
      const log = logs[i];
      st.used += cost;
      st.remaining = Math.max(0, st.limit - st.used);
      if (log) {
        if (cost > 0) {
          this.logEntries += log.add(st.start, now, cost);
          st.resetMs = Math.max(0, log.oldestStamp! + w.windowMs - now);
        }
        if (log.length === 0) this.map.delete(`${key}:${w.name}`);
        else this.expire(`${key}:${w.name}`, log, w.windowMs);
        continue;
      }
      const k = `${key}:${w.name}`;
      const e = this.map.get(k);
      if (e && e.l === undefined && e.v === undefined && e.f === undefined && e.z === undefined) {
        // the window's own entry (read by `check` just before): updated in place
        e.s = st.start;
        e.c = st.used;
        e.exp = st.start + w.windowMs;
      } else this.put(k, { s: st.start, c: st.used, exp: st.start + w.windowMs });
    }
  }

  /** Keeps a sliding log until its newest entry is freed and its block is over. */
  private expire(k: string, log: SlidingLog, windowMs: number): void {
    const e = this.map.get(k);
    if (e) e.exp = Math.max(log.lastStamp + windowMs, log.blockedUntil);
  }

  async adjust(key: string, windows: readonly WindowRef[], delta: number): Promise<void> {
    this.adjustNow(key, windows, delta, this.now());
  }

  /** The adjusts of `ops`, with the windows' counts after them (see `OpenAIStore.adjustMany`). */
  async adjustMany(ops: readonly AdjustOp[]): Promise<AdjustManyResult> {
    const now = this.now();
    return ops.map((op) => this.adjustNow(op.key, op.windows, op.delta, now));
  }

  private adjustNow(
    key: string,
    windows: readonly WindowRef[],
    delta: number,
    now: number,
  ): Array<number | undefined> {
    return windows.map((w) => {
      const e = this.live(`${key}:${w.name}`, now);
      if (!e) return undefined;
      if (e.l) {
        if (delta !== 0) e.l.adjust(w.start, delta);
        return e.l.total;
      }
      if (e.s !== w.start) return undefined;
      e.c = Math.max(0, (e.c ?? 0) + delta);
      return e.c;
    });
  }

  async incrementFields(key: string, fields: Readonly<Record<string, number>>, ttlMs: number): Promise<void> {
    const now = this.now();
    let e = this.live(key, now);
    if (!e) {
      e = { exp: now + ttlMs, f: Object.create(null) as Record<string, number> };
      this.put(key, e);
    }
    const f = e.f!;
    for (const [name, v] of Object.entries(fields)) f[name] = (f[name] ?? 0) + v;
  }

  async getFields(key: string): Promise<Record<string, number>> {
    return { ...(this.live(key, this.now())?.f ?? {}) };
  }

  async get(key: string): Promise<string | undefined> {
    return this.live(key, this.now())?.v;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.put(key, { v: value, exp: this.now() + ttlMs });
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    if (this.live(key, this.now())) return false;
    await this.set(key, value, ttlMs);
    return true;
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.map.clear();
    this.logEntries = 0;
  }
  async acquireSlot(key: string, id: string, limit: number, ttlMs: number): Promise<SlotResult> {
    const now = this.now();
    let e = this.live(key, now);
    if (!e?.z) {
      e = { exp: now + ttlMs, z: new Map() };
      this.put(key, e);
    }
    const slots = e.z!;
    let earliest = Infinity;
    for (const [sid, exp] of slots) {
      if (exp <= now) slots.delete(sid);
      else if (exp < earliest) earliest = exp;
    }
    if (!slots.has(id) && slots.size >= limit)
      return { acquired: false, held: slots.size, retryAfterMs: Math.max(0, earliest - now) };
    slots.set(id, now + ttlMs);
    e.exp = Math.max(e.exp, now + ttlMs);
    return { acquired: true, held: slots.size, retryAfterMs: 0 };
  }

  async releaseSlot(key: string, id: string): Promise<void> {
    this.live(key, this.now())?.z?.delete(id);
  }

  /** Circuit breakers (one per model: few keys, kept apart from the LRU). */
  private readonly breakers = new Map<string, BreakerEntry>();

  private breaker(key: string): BreakerEntry {
    let b = this.breakers.get(key);
    if (!b) {
      b = { s: 0, f: 0, u: 0, p: 0 };
      this.breakers.set(key, b);
    }
    return b;
  }

  async breakerAdmit(key: string, probeLeaseMs: number): Promise<BreakerAdmission> {
    const now = this.now();
    const b = this.breaker(key);
    const out = (allowed: boolean, probe: boolean, retryAfterMs: number, changed: boolean) => ({
      state: BREAKER_STATES[b.s],
      allowed,
      probe,
      failures: b.f,
      retryAfterMs: Math.max(0, retryAfterMs),
      changed,
    });
    if (b.s === 1) {
      if (now < b.u) return out(false, false, b.u - now, false);
      b.s = 2;
      b.p = now + probeLeaseMs;
      return out(true, true, 0, true);
    }
    if (b.s === 2) {
      if (now < b.p) return out(false, false, b.p - now, false);
      b.p = now + probeLeaseMs;
      return out(true, true, 0, false);
    }
    return out(true, false, 0, false);
  }

  async breakerReport(
    key: string,
    ok: boolean,
    threshold: number,
    cooldownMs: number,
    probe: boolean,
  ): Promise<BreakerReport> {
    const now = this.now();
    const b = this.breaker(key);
    const from = BREAKER_STATES[b.s];
    if (ok) {
      b.s = 0;
      b.f = 0;
      b.u = 0;
      b.p = 0;
    } else if (b.s === 2) {
      if (probe) {
        b.s = 1;
        b.u = now + cooldownMs;
        b.p = 0;
      }
    } else if (b.s === 0) {
      b.f += 1;
      if (b.f >= threshold) {
        b.s = 1;
        b.u = now + cooldownMs;
      }
    }
    const state = BREAKER_STATES[b.s];
    return { state, from, changed: state !== from };
  }
}
