import type { Cluster, Redis, RedisOptions } from 'ioredis';
import { OpenAIProductionError } from '../errors/openai-production.error.js';
import type {
  ConsumeResult,
  OpenAIStore,
  WindowLimit,
  WindowRef,
  WindowState,
} from './openai-store.interface.js';

/** Options of the Redis store. */
export interface RedisStoreOptions {
  /** An ioredis client (or Cluster) the app owns; the store never closes it. */
  client?: Redis | Cluster;
  /** A Redis URL (`redis://host:6379/0`, `rediss://...`) to open a client with; the store closes it on shutdown. */
  url?: string;
  /** Extra ioredis options for a client opened from `url`. */
  redisOptions?: RedisOptions;
  /**
   * Prefix of every key. Each key also carries a `{hash tag}` so that one subject's keys share a Redis Cluster slot.
   * @default 'openai:'
   */
  keyPrefix?: string;
  /**
   * Longest wait for one operation (ms); past it the operation fails and the failure policy applies.
   * @default 500
   */
  commandTimeoutMs?: number;
}

// Window state per key: a hash { s: start (epoch ms), c: count }. Time comes from Redis (TIME), so
// instances with skewed clocks agree. ARGV: cost, then (limit, windowMs, startAt or -1) per key.
const CONSUME = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local n = #KEYS
local starts, useds = {}, {}
local blocked = 0
for i = 1, n do
  local limit = tonumber(ARGV[i * 3 - 1])
  local win = tonumber(ARGV[i * 3])
  local fixed = tonumber(ARGV[i * 3 + 1])
  local v = redis.call('HMGET', KEYS[i], 's', 'c')
  local s = tonumber(v[1])
  local c = tonumber(v[2]) or 0
  if s == nil or (fixed >= 0 and s ~= fixed) or (fixed < 0 and now >= s + win) then
    if fixed >= 0 then s = fixed else s = now end
    c = 0
  end
  starts[i] = s
  useds[i] = c
  if blocked == 0 and c + cost > limit then blocked = i end
end
if blocked == 0 then
  for i = 1, n do
    useds[i] = useds[i] + cost
    redis.call('HSET', KEYS[i], 's', string.format('%.0f', starts[i]), 'c', string.format('%.0f', useds[i]))
    redis.call('PEXPIREAT', KEYS[i], starts[i] + tonumber(ARGV[i * 3]))
  end
end
local out = { blocked, now }
for i = 1, n do
  out[#out + 1] = starts[i]
  out[#out + 1] = useds[i]
end
return out
`;

// ARGV: delta, then the referenced window start per key.
const ADJUST = `
local delta = tonumber(ARGV[1])
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 's', 'c')
  if v[1] and tonumber(v[1]) == tonumber(ARGV[i + 1]) then
    local c = (tonumber(v[2]) or 0) + delta
    if c < 0 then c = 0 end
    redis.call('HSET', KEYS[i], 'c', string.format('%.0f', c))
  end
end
return 1
`;

// ARGV: ttlMs, then field, value pairs.
const INCREMENT_FIELDS = `
for i = 2, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
`;

interface ScriptedClient {
  openaiConsume(...args: Array<string | number>): Promise<number[]>;
  openaiAdjust(...args: Array<string | number>): Promise<number>;
  openaiIncrementFields(...args: Array<string | number>): Promise<number>;
}

/** Thrown when a Redis operation fails or exceeds `commandTimeoutMs`. */
export class StoreUnavailableError extends OpenAIProductionError {}

/**
 * Shared state on Redis: each operation is one round trip (Lua scripts registered once with
 * `defineCommand`, so ioredis calls them by SHA and reloads them only after a `NOSCRIPT`).
 * Keys: `<prefix>{<key>}:<window>`.
 */
export class RedisStore implements OpenAIStore {
  readonly kind = 'redis';
  readonly client: Redis | Cluster;
  private readonly owned: boolean;
  private readonly prefix: string;
  private readonly timeoutMs: number;

  constructor(options: RedisStoreOptions, RedisCtor?: new (url: string, opts: RedisOptions) => Redis) {
    if (options.client) {
      this.client = options.client;
      this.owned = false;
    } else if (options.url && RedisCtor) {
      this.client = new RedisCtor(options.url, {
        // Fail fast instead of queueing while disconnected: the failure policy decides, not a growing queue.
        enableOfflineQueue: false,
        maxRetriesPerRequest: 1,
        // A command answered by the failure policy while disconnected must not be replayed (and counted) after a reconnect.
        autoResendUnfulfilledCommands: false,
        retryStrategy: (times) => Math.min(50 * 2 ** times, 2_000),
        ...options.redisOptions,
      });
      this.owned = true;
      // Connection errors reach the failure policy through the failing operations and are logged there,
      // once per transition; without a listener ioredis would print each reconnect attempt.
      this.client.on('error', () => undefined);
    } else {
      throw new OpenAIProductionError('RedisStore needs `client` (an ioredis instance) or `url`');
    }
    this.prefix = options.keyPrefix ?? 'openai:';
    this.timeoutMs = options.commandTimeoutMs ?? 500;
    const c = this.client as unknown as { defineCommand(name: string, def: { lua: string }): void };
    c.defineCommand('openaiConsume', { lua: CONSUME });
    c.defineCommand('openaiAdjust', { lua: ADJUST });
    c.defineCommand('openaiIncrementFields', { lua: INCREMENT_FIELDS });
  }

  /** Whether the client is connected and ready. */
  get ready(): boolean {
    return this.client.status === 'ready';
  }

  private k(key: string, suffix?: string): string {
    return `${this.prefix}{${key}}${suffix ? `:${suffix}` : ''}`;
  }

  private run<T>(op: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      // Timers run before pending I/O is read: after a busy stretch of the event loop (GC, a burst of
      // requests) the reply may be waiting in the socket. Decide after the poll phase (setImmediate), so
      // only a Redis that really did not answer counts as a timeout (and trips the failure policy).
      const timer = setTimeout(
        () =>
          setImmediate(() =>
            reject(new StoreUnavailableError(`Redis did not answer within ${this.timeoutMs} ms`)),
          ),
        this.timeoutMs,
      );
      op().then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(
            new StoreUnavailableError(`Redis operation failed: ${(err as Error)?.message ?? String(err)}`, {
              cause: err,
            }),
          );
        },
      );
    });
  }

  private get scripted(): ScriptedClient {
    return this.client as unknown as ScriptedClient;
  }

  async consume(key: string, windows: readonly WindowLimit[], cost: number): Promise<ConsumeResult> {
    const args: Array<string | number> = [
      windows.length,
      ...windows.map((w) => this.k(key, w.name)),
      Math.ceil(cost),
    ];
    for (const w of windows) args.push(w.limit, w.windowMs, w.startAt ?? -1);
    const out = await this.run(() => this.scripted.openaiConsume(...args));
    const blocked = Number(out[0]);
    const now = Number(out[1]);
    const states: WindowState[] = windows.map((w, i) => {
      const start = Number(out[2 + i * 2]);
      const used = Number(out[3 + i * 2]);
      return {
        name: w.name,
        limit: w.limit,
        used,
        remaining: Math.max(0, w.limit - used),
        start,
        resetMs: Math.max(0, start + w.windowMs - now),
      };
    });
    return blocked === 0
      ? { allowed: true, windows: states }
      : { allowed: false, windows: states, blockedBy: states[blocked - 1] };
  }

  async adjust(key: string, windows: readonly WindowRef[], delta: number): Promise<void> {
    if (windows.length === 0 || delta === 0) return;
    const d = delta > 0 ? Math.ceil(delta) : -Math.ceil(-delta);
    await this.run(() =>
      this.scripted.openaiAdjust(
        windows.length,
        ...windows.map((w) => this.k(key, w.name)),
        d,
        ...windows.map((w) => w.start),
      ),
    );
  }

  async incrementFields(key: string, fields: Readonly<Record<string, number>>, ttlMs: number): Promise<void> {
    const pairs = Object.entries(fields).flatMap(([f, v]) => [f, v]);
    if (pairs.length === 0) return;
    await this.run(() => this.scripted.openaiIncrementFields(1, this.k(key), Math.ceil(ttlMs), ...pairs));
  }

  async getFields(key: string): Promise<Record<string, number>> {
    const raw = await this.run(() => this.client.hgetall(this.k(key)));
    const out: Record<string, number> = {};
    for (const [f, v] of Object.entries(raw)) out[f] = Number(v);
    return out;
  }

  async get(key: string): Promise<string | undefined> {
    return (await this.run(() => this.client.get(this.k(key)))) ?? undefined;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    await this.run(() => this.client.set(this.k(key), value, 'PX', Math.max(1, Math.ceil(ttlMs))));
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    return (
      (await this.run(() =>
        this.client.set(this.k(key), value, 'PX', Math.max(1, Math.ceil(ttlMs)), 'NX'),
      )) === 'OK'
    );
  }

  async ping(): Promise<void> {
    await this.run(() => this.client.ping());
  }

  /** Waits until the client is ready, up to `timeoutMs`. */
  async waitReady(timeoutMs: number): Promise<void> {
    if (this.ready) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        reject(
          new StoreUnavailableError(
            `Redis was not ready within ${timeoutMs} ms (status: ${this.client.status})`,
          ),
        );
      }, timeoutMs);
      const onReady = () => {
        clearTimeout(timer);
        resolve();
      };
      this.client.once('ready', onReady);
    });
  }

  async close(): Promise<void> {
    if (this.owned) {
      try {
        await this.client.quit();
      } catch {
        this.client.disconnect();
      }
    }
  }
}
