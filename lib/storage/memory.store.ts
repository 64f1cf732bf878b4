import type {
  ConsumeResult,
  OpenAIStore,
  WindowLimit,
  WindowRef,
  WindowState,
} from './openai-store.interface.js';

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
}

interface Entry {
  /** epoch ms after which the entry is gone */
  exp: number;
  /** window start (windows) */
  s?: number;
  /** window count (windows) */
  c?: number;
  v?: string;
  f?: Record<string, number>;
}

/**
 * The default store: exact within one process, O(1) per operation, bounded (LRU cap), expired keys
 * removed by one periodic sweep. Not shared between instances: use the Redis store for that.
 */
export class MemoryStore implements OpenAIStore {
  readonly kind = 'memory';
  private readonly map = new Map<string, Entry>();
  private readonly maxKeys: number;
  private readonly sweeper: NodeJS.Timeout;

  constructor(options: MemoryStoreOptions = {}) {
    this.maxKeys = options.maxKeys ?? 200_000;
    this.sweeper = setInterval(() => this.sweep(), options.sweepIntervalMs ?? 30_000);
    this.sweeper.unref();
  }

  /** Number of keys held (expired ones not yet swept included). */
  get size(): number {
    return this.map.size;
  }

  /** Deletes every expired key now. */
  sweep(now = Date.now()): void {
    for (const [k, e] of this.map) if (e.exp <= now) this.map.delete(k);
  }

  private live(key: string, now: number): Entry | undefined {
    const e = this.map.get(key);
    if (!e) return undefined;
    if (e.exp <= now) {
      this.map.delete(key);
      return undefined;
    }
    // Move to the end: Map order is the LRU order.
    this.map.delete(key);
    this.map.set(key, e);
    return e;
  }

  private put(key: string, e: Entry): void {
    this.map.delete(key);
    this.map.set(key, e);
    if (this.map.size > this.maxKeys) {
      const oldest = this.map.keys().next().value as string;
      this.map.delete(oldest);
    }
  }

  async consume(key: string, windows: readonly WindowLimit[], cost: number): Promise<ConsumeResult> {
    const now = Date.now();
    const states: WindowState[] = [];
    let blockedBy: WindowState | undefined;
    for (const w of windows) {
      const e = this.live(`${key}:${w.name}`, now);
      let start = e?.s ?? now;
      let used = e?.c ?? 0;
      if (!e || (w.startAt !== undefined ? start !== w.startAt : now >= start + w.windowMs)) {
        start = w.startAt ?? now;
        used = 0;
      }
      const fits = used + cost <= w.limit;
      const st: WindowState = {
        name: w.name,
        limit: w.limit,
        used,
        remaining: Math.max(0, w.limit - used),
        start,
        resetMs: Math.max(0, start + w.windowMs - now),
      };
      if (!fits && !blockedBy) blockedBy = st;
      states.push(st);
    }
    if (blockedBy) return { allowed: false, windows: states, blockedBy };
    for (let i = 0; i < windows.length; i++) {
      const st = states[i];
      st.used += cost;
      st.remaining = Math.max(0, st.limit - st.used);
      this.put(`${key}:${windows[i].name}`, { s: st.start, c: st.used, exp: st.start + windows[i].windowMs });
    }
    return { allowed: true, windows: states };
  }

  async adjust(key: string, windows: readonly WindowRef[], delta: number): Promise<void> {
    const now = Date.now();
    for (const w of windows) {
      const e = this.live(`${key}:${w.name}`, now);
      if (e && e.s === w.start) e.c = Math.max(0, (e.c ?? 0) + delta);
    }
  }

  async incrementFields(key: string, fields: Readonly<Record<string, number>>, ttlMs: number): Promise<void> {
    const now = Date.now();
    let e = this.live(key, now);
    if (!e) {
      e = { exp: now + ttlMs, f: Object.create(null) as Record<string, number> };
      this.put(key, e);
    }
    const f = e.f!;
    for (const [name, v] of Object.entries(fields)) f[name] = (f[name] ?? 0) + v;
  }

  async getFields(key: string): Promise<Record<string, number>> {
    return { ...(this.live(key, Date.now())?.f ?? {}) };
  }

  async get(key: string): Promise<string | undefined> {
    return this.live(key, Date.now())?.v;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.put(key, { v: value, exp: Date.now() + ttlMs });
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    if (this.live(key, Date.now())) return false;
    await this.set(key, value, ttlMs);
    return true;
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.map.clear();
  }
}
