import type { Cluster, ClusterOptions, Redis, RedisOptions } from 'ioredis';
import { OpenAIProductionError } from '../errors/openai-production.error.js';
import type {
  AdjustManyResult,
  AdjustOp,
  BreakerAdmission,
  BreakerReport,
  BreakerState,
  ConsumeManyResult,
  ConsumeOp,
  ConsumeResult,
  SlotResult,
  OpenAIStore,
  WindowLimit,
  WindowRef,
  WindowState,
} from './openai-store.interface.js';
import {
  ClusterMonitor,
  clusterOptions,
  isClusterUrl,
  parseClusterUrl,
  parseNode,
  withTimeout,
  type ClusterHealth,
  type RedisClusterConfig,
} from './redis-cluster.js';
import { slotMs } from './sliding-window.js';
import { RedisChannels, peekBreaker, type ChannelListener } from './redis-channels.js';
import { clusterKeySlot } from './cluster-slot.js';
import { consumeEach } from './multi-key.js';

/** True when every key (prefixed) hashes to one Redis Cluster slot. */
function sameSlot(keys: readonly string[]): boolean {
  if (keys.length < 2) return true;
  const first = clusterKeySlot(keys[0]);
  return keys.every((k) => clusterKeySlot(k) === first);
}

/** Options of the Redis store: exactly one of `client`, `url`, `cluster`. */
export interface RedisStoreOptions {
  /**
   * An ioredis client (`Redis`) or `Cluster` the app owns; the store never closes it. A `Cluster` gets
   * the same per-master health tracking as one the store opens.
   */
  client?: Redis | Cluster;
  /**
   * A URL to open a client with; the store closes it on shutdown.
   * - `redis://[user:password@]host:6379[/db]` (`rediss://` for TLS): one Redis. When it points at a
   *   Redis Cluster node (`INFO cluster` says `cluster_enabled:1`), the store connects to the cluster
   *   through that node instead, and logs a warning suggesting the cluster form.
   * - `redis+cluster://[user:password@]host1:port1,host2:port2` (`rediss+cluster://` for TLS): a Redis
   *   Cluster reached through these seed nodes, with `CLUSTER_DEFAULTS`.
   */
  url?: string;
  /** A Redis Cluster for the store to open (and close on shutdown): seed nodes and `Cluster` options. */
  cluster?: RedisClusterConfig;
  /** Extra ioredis options for a client opened from `url` (each node's options, for a cluster). */
  redisOptions?: RedisOptions;
  /**
   * Prefix of every key. Must not contain `{` or `}`: each key carries its own `{hash tag}` (one user's
   * keys share a Redis Cluster slot), and a tag in the prefix would put every key in one slot.
   * @default 'openai:'
   */
  keyPrefix?: string;
  /**
   * Longest wait for one operation (ms); past it the operation fails and the failure policy applies.
   * On a cluster, a timed-out operation also marks its master down until the health check reaches it.
   * @default 500
   */
  commandTimeoutMs?: number;
  /**
   * Redis Cluster only: interval of the background health check (ms) that asks every master for
   * `CLUSTER INFO` and marks a master that answers with `cluster_state:ok` again as up.
   * @default 1000
   */
  healthCheckIntervalMs?: number;
  /**
   * The clock of the window scripts (epoch ms), for tests that control time; keys still expire by
   * Redis' own clock, so keep it at or ahead of the real time. Unset (production): the scripts read
   * Redis' `TIME`, so instances with skewed clocks agree.
   */
  now?: () => number;
}

type RedisCtor = new (url: string, opts: RedisOptions) => Redis;
type ClusterCtor = new (nodes: Array<{ host: string; port: number }>, opts: ClusterOptions) => Cluster;

/**
 * Lua lines that set `now` (epoch ms) from `ARGV[argv]`, or from Redis' own clock (`TIME`) when it is
 * negative (tests pass a clock; production lets Redis decide, so instances never disagree).
 */
function luaNow(argv: number): string {
  return `local now = tonumber(ARGV[${argv}])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end`;
}

// Time comes from Redis (TIME), so instances with skewed clocks agree (ARGV[2] >= 0 overrides it, for
// tests that control time). ARGV: now, then (cost, limit, windowMs, startAt or -1, blockMs, slotMs) per
// window; KEYS: two per window. The windows may belong to several keys (`consumeMany`: each op's windows
// with its cost): all are counted, or none.
// - Sliding window (startAt -1; see sliding-window.ts): KEYS `<k>:sw`, a hash { n: units counted,
//   b: blocked until, <id>: units of entry <id> }, and `<k>:sl`, a list of the entries `<id>:<stamp>`,
//   oldest first. Freed entries are popped from the head (O(1) amortized); both keys expire one window
//   after the newest stamp (the hash not before the block ends).
// - Calendar window (startAt >= 0): KEYS `<k>` twice, a hash { s: start (epoch ms), c: count }.
// Returns: index of the first window that refused (0: admitted), now, then (start, used, remaining,
// resetMs) per window.
const CONSUME = `
${luaNow(1)}
local function fmt(x) return string.format('%.0f', x) end
local function parse(e)
  local c = string.find(e, ':', 1, true)
  return string.sub(e, 1, c - 1), tonumber(string.sub(e, c + 1))
end
local n = #KEYS / 2
local starts, useds, rems, resets, room = {}, {}, {}, {}, {}
local refused = 0
for i = 1, n do
  local a = i * 6 - 3
  local cost = tonumber(ARGV[a - 1])
  local limit = tonumber(ARGV[a])
  local win = tonumber(ARGV[a + 1])
  local fixed = tonumber(ARGV[a + 2])
  local slot = tonumber(ARGV[a + 4])
  local h, l = KEYS[i * 2 - 1], KEYS[i * 2]
  if fixed >= 0 then
    local v = redis.call('HMGET', h, 's', 'c')
    local s = tonumber(v[1])
    local c = tonumber(v[2]) or 0
    if s == nil or s ~= fixed then
      s = fixed
      c = 0
    end
    starts[i] = s
    useds[i] = c
    rems[i] = math.max(0, limit - c)
    resets[i] = math.max(0, s + win - now)
    room[i] = c + cost <= limit
  else
    local v = redis.call('HMGET', h, 'n', 'b')
    local total = tonumber(v[1]) or 0
    local b = tonumber(v[2]) or 0
    local cut = now - win
    local len = redis.call('LLEN', l)
    if len == 0 then
      if total ~= 0 or redis.call('HLEN', h) > 1 then
        redis.call('DEL', h)
        if b > now then
          redis.call('HSET', h, 'b', fmt(b))
          redis.call('PEXPIREAT', h, b)
        end
      end
      total = 0
    else
      -- free the slots of the head stamped at or before now - windowMs, 64 at a time
      local pruned = false
      while len > 0 do
        local head = redis.call('LRANGE', l, 0, 63)
        local k = 0
        local freed = {}
        for j = 1, #head do
          local id, stamp = parse(head[j])
          if stamp > cut then break end
          k = j
          freed[j] = id
        end
        if k == 0 then break end
        local units = redis.call('HMGET', h, unpack(freed))
        for j = 1, k do total = total - (tonumber(units[j]) or 0) end
        redis.call('HDEL', h, unpack(freed))
        redis.call('LTRIM', l, k, -1)
        len = len - k
        pruned = true
        if k < #head then break end
      end
      if len == 0 or total < 0 then total = 0 end
      if pruned then redis.call('HSET', h, 'n', fmt(total)) end
    end
    local id = now
    local oldest
    if len > 0 then
      local lastId = tonumber((parse(redis.call('LINDEX', l, -1))))
      if now < lastId + slot then id = lastId end
      local _, o = parse(redis.call('LINDEX', l, 0))
      oldest = o
    end
    local blocked = b > now
    starts[i] = id
    useds[i] = total
    if blocked then rems[i] = 0 else rems[i] = math.max(0, limit - total) end
    if oldest then resets[i] = math.max(0, oldest + win - now) else resets[i] = 0 end
    room[i] = (not blocked) and total + cost <= limit
    if not room[i] then
      -- when the cost fits: the oldest entries that must be freed for it, read in doubling chunks
      local at = -1
      local need = total + cost - limit
      if need > 0 then
        at = now + win
        local freed, from, size = 0, 0, 32
        while from < len do
          local chunk = redis.call('LRANGE', l, from, from + size - 1)
          local ids, stamps = {}, {}
          for j = 1, #chunk do ids[j], stamps[j] = parse(chunk[j]) end
          local units = redis.call('HMGET', h, unpack(ids))
          local found = false
          for j = 1, #chunk do
            freed = freed + (tonumber(units[j]) or 0)
            if freed >= need then
              at = stamps[j] + win
              found = true
              break
            end
          end
          if found then break end
          from = from + size
          size = size * 2
        end
      end
      if blocked and b > at then at = b end
      resets[i] = math.max(0, at - now)
    end
  end
  if refused == 0 and not room[i] then refused = i end
end
if refused > 0 then
  -- nothing is counted; the sliding windows without room start their block
  for i = 1, n do
    local a = i * 6 - 3
    local block = tonumber(ARGV[a + 3])
    if tonumber(ARGV[a + 2]) < 0 and not room[i] and block > 0 then
      local h, l = KEYS[i * 2 - 1], KEYS[i * 2]
      local b = tonumber(redis.call('HGET', h, 'b')) or 0
      if b <= now then
        b = now + block
        redis.call('HSET', h, 'b', fmt(b))
        local last = redis.call('LINDEX', l, -1)
        if last then
          local _, stamp = parse(last)
          redis.call('PEXPIREAT', h, math.max(b, stamp + tonumber(ARGV[a + 1])))
        else
          redis.call('PEXPIREAT', h, b)
        end
      end
      rems[i] = 0
      if b - now > resets[i] then resets[i] = b - now end
    end
  end
else
  for i = 1, n do
    local a = i * 6 - 3
    local cost = tonumber(ARGV[a - 1])
    local win = tonumber(ARGV[a + 1])
    local h, l = KEYS[i * 2 - 1], KEYS[i * 2]
    useds[i] = useds[i] + cost
    rems[i] = math.max(0, tonumber(ARGV[a]) - useds[i])
    if tonumber(ARGV[a + 2]) >= 0 then
      redis.call('HSET', h, 's', fmt(starts[i]), 'c', fmt(useds[i]))
      redis.call('PEXPIREAT', h, starts[i] + win)
    elseif cost > 0 then
      local f = fmt(starts[i])
      local last = redis.call('LINDEX', l, -1)
      local stamp = now
      if last and tonumber((parse(last))) == starts[i] then
        local _, ls = parse(last)
        if ls > stamp then stamp = ls end
        redis.call('LSET', l, -1, f .. ':' .. fmt(stamp))
        redis.call('HINCRBY', h, f, cost)
      else
        redis.call('RPUSH', l, f .. ':' .. fmt(stamp))
        redis.call('HSET', h, f, fmt(cost))
      end
      redis.call('HSET', h, 'n', fmt(useds[i]))
      local b = tonumber(redis.call('HGET', h, 'b')) or 0
      redis.call('PEXPIREAT', l, stamp + win)
      redis.call('PEXPIREAT', h, math.max(stamp + win, b))
      local _, o = parse(redis.call('LINDEX', l, 0))
      resets[i] = math.max(0, o + win - now)
    end
  end
end
local out = { refused, now }
for i = 1, n do
  out[#out + 1] = starts[i]
  out[#out + 1] = useds[i]
  out[#out + 1] = rems[i]
  out[#out + 1] = resets[i]
end
return out
`;

// ARGV: (delta, referenced start) per window; KEYS per window: `<k>` (calendar window) and `<k>:sw`
// (sliding window: the units of the referenced entry). The windows may belong to several keys
// (`adjustMany`). Returns per window the units counted after it (a calendar window: its period's count; a
// sliding window: the window's total), or -1 when the referenced period or entry is gone.
const ADJUST = `
local out = {}
for i = 1, #KEYS / 2 do
  local delta = tonumber(ARGV[i * 2 - 1])
  local ref = tonumber(ARGV[i * 2])
  local kf, kh = KEYS[i * 2 - 1], KEYS[i * 2]
  local v = redis.call('HMGET', kf, 's', 'c')
  out[i] = -1
  if v[1] and tonumber(v[1]) == ref then
    local c = (tonumber(v[2]) or 0) + delta
    if c < 0 then c = 0 end
    if delta ~= 0 then redis.call('HSET', kf, 'c', string.format('%.0f', c)) end
    out[i] = c
  else
    local f = string.format('%.0f', ref)
    local c = tonumber(redis.call('HGET', kh, f))
    if c then
      local nv = c + delta
      if nv < 0 then nv = 0 end
      local total = (tonumber(redis.call('HGET', kh, 'n')) or 0) + nv - c
      if total < 0 then total = 0 end
      if delta ~= 0 then
        redis.call('HSET', kh, f, string.format('%.0f', nv))
        redis.call('HSET', kh, 'n', string.format('%.0f', total))
      end
      out[i] = total
    end
  end
end
return out
`;

// ARGV: ttlMs, then field, value pairs.
const INCREMENT_FIELDS = `
for i = 2, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
`;

// In-flight slots: KEYS[1] a sorted set of slot ids scored by their expiry (epoch ms). ARGV: id, limit,
// ttlMs, now (-1: Redis' TIME). Expired slots are dropped first; an id already held is renewed. The key
// expires with its last slot. Returns: acquired (0/1), live slots, ms until the earliest slot expires.
const ACQUIRE_SLOT = `
${luaNow(4)}
local k = KEYS[1]
local limit = tonumber(ARGV[2])
local exp = now + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
local held = redis.call('ZCARD', k)
if not redis.call('ZSCORE', k, ARGV[1]) and held >= limit then
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  local wait = 0
  if first[2] then wait = tonumber(first[2]) - now end
  return { 0, held, wait }
end
redis.call('ZADD', k, string.format('%.0f', exp), ARGV[1])
local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', k, math.max(exp, tonumber(last[2])))
return { 1, redis.call('ZCARD', k), 0 }
`;

// Circuit breaker: KEYS[1] a hash { s: 0 closed / 1 open / 2 half-open, f: consecutive failures,
// u: open until, p: probe lease until } (epoch ms), kept a day after its last change.
// BREAKER_ADMIT ARGV: probeLeaseMs, now. Returns: state, allowed, probe, failures, retryAfterMs, changed.
const BREAKER_ADMIT = `
${luaNow(2)}
local k = KEYS[1]
local v = redis.call('HMGET', k, 's', 'f', 'u', 'p')
local s = tonumber(v[1]) or 0
local f = tonumber(v[2]) or 0
local u = tonumber(v[3]) or 0
local p = tonumber(v[4]) or 0
local lease = string.format('%.0f', now + tonumber(ARGV[1]))
if s == 1 then
  if now < u then return { 1, 0, 0, f, u - now, 0 } end
  redis.call('HSET', k, 's', 2, 'p', lease)
  redis.call('PEXPIRE', k, 86400000)
  return { 2, 1, 1, f, 0, 1 }
end
if s == 2 then
  if now < p then return { 2, 0, 0, f, p - now, 0 } end
  redis.call('HSET', k, 'p', lease)
  redis.call('PEXPIRE', k, 86400000)
  return { 2, 1, 1, f, 0, 0 }
end
return { 0, 1, 0, f, 0, 0 }
`;

// BREAKER_REPORT ARGV: ok (0/1), threshold, cooldownMs, probe (0/1), now. Returns: state, previous state.
const BREAKER_REPORT = `
${luaNow(5)}
local k = KEYS[1]
local v = redis.call('HMGET', k, 's', 'f')
local s = tonumber(v[1]) or 0
local f = tonumber(v[2]) or 0
local until_ = string.format('%.0f', now + tonumber(ARGV[3]))
if ARGV[1] == '1' then
  redis.call('DEL', k)
  return { 0, s }
end
if s == 2 then
  if ARGV[4] == '1' then
    redis.call('HSET', k, 's', 1, 'u', until_, 'p', 0)
    redis.call('PEXPIRE', k, 86400000)
    return { 1, s }
  end
  return { 2, s }
end
if s == 1 then return { 1, s } end
f = f + 1
if f >= tonumber(ARGV[2]) then
  redis.call('HSET', k, 's', 1, 'f', f, 'u', until_)
else
  redis.call('HSET', k, 'f', f)
end
redis.call('PEXPIRE', k, 86400000)
if f >= tonumber(ARGV[2]) then return { 1, 0 } end
return { 0, 0 }
`;

const BREAKER_STATES: readonly BreakerState[] = ['closed', 'open', 'half-open'];

interface ScriptedClient {
  openaiAcquireSlot(...args: Array<string | number>): Promise<number[]>;
  openaiBreakerAdmit(...args: Array<string | number>): Promise<number[]>;
  openaiBreakerReport(...args: Array<string | number>): Promise<number[]>;
  openaiConsume(...args: Array<string | number>): Promise<number[]>;
  openaiAdjust(...args: Array<string | number>): Promise<number[]>;
  openaiIncrementFields(...args: Array<string | number>): Promise<number>;
}

/** Thrown when a Redis operation fails or exceeds `commandTimeoutMs`. */
export class StoreUnavailableError extends OpenAIProductionError {}

/**
 * Shared state on Redis or a Redis Cluster: each operation is one round trip (Lua scripts registered
 * once with `defineCommand`, so ioredis calls them by SHA and reloads them only after a `NOSCRIPT`), on
 * keys of one slot. Keys: `<prefix><key>`, the key's own `{hash tag}` kept, else `<prefix>{<key>}`;
 * window keys add `:<window>`.
 *
 * On a cluster, the health of each master is tracked (`ClusterMonitor`): an operation whose slot lives
 * on a master known to be down fails at once, so the failure policy answers without waiting for
 * `commandTimeoutMs`, while keys on the other masters are served as usual.
 */
export class RedisStore implements OpenAIStore {
  readonly kind = 'redis';
  readonly client: Redis | Cluster;
  /** Per-master health, when the client is a cluster. */
  readonly monitor?: ClusterMonitor;
  private readonly owned: boolean;
  private readonly prefix: string;
  private readonly timeoutMs: number;
  private readonly now?: () => number;

  /**
   * @param RedisCtor ioredis' `Redis`, to open a client from a plain `url` (and to probe cluster nodes).
   * @param ClusterCtor ioredis' `Cluster`, to open a cluster from `cluster` or a `redis+cluster://` URL.
   */
  constructor(
    options: RedisStoreOptions,
    private readonly RedisCtor?: RedisCtor,
    ClusterCtor?: ClusterCtor,
  ) {
    if (options.client) {
      this.client = options.client;
      this.owned = false;
    } else if ((options.cluster || (options.url && isClusterUrl(options.url))) && ClusterCtor) {
      const fromUrl = options.url && isClusterUrl(options.url) ? parseClusterUrl(options.url) : undefined;
      const nodes = fromUrl?.nodes ?? options.cluster!.nodes.map(parseNode);
      this.client = new ClusterCtor(
        nodes,
        clusterOptions(options.cluster?.options, { ...fromUrl?.redisOptions, ...options.redisOptions }),
      );
      this.owned = true;
      this.client.on('error', () => undefined);
      this.client.on('node error', () => undefined);
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
      throw new OpenAIProductionError(
        'RedisStore needs `client` (an ioredis instance), `url` or `cluster` (with ioredis installed)',
      );
    }
    this.prefix = options.keyPrefix ?? 'openai:';
    this.timeoutMs = options.commandTimeoutMs ?? 500;
    this.now = options.now;
    if ((this.client as Cluster).isCluster) {
      const Probe = RedisCtor;
      this.monitor = new ClusterMonitor(this.client as Cluster, {
        intervalMs: options.healthCheckIntervalMs ?? 1_000,
        timeoutMs: this.timeoutMs,
        probe: (host, port, timeoutMs) => probeNode(Probe, this.client as Cluster, host, port, timeoutMs),
      });
    }
    const c = this.client as unknown as { defineCommand(name: string, def: { lua: string }): void };
    c.defineCommand('openaiConsume', { lua: CONSUME });
    c.defineCommand('openaiAdjust', { lua: ADJUST });
    c.defineCommand('openaiIncrementFields', { lua: INCREMENT_FIELDS });
    c.defineCommand('openaiAcquireSlot', { lua: ACQUIRE_SLOT });
    c.defineCommand('openaiBreakerAdmit', { lua: BREAKER_ADMIT });
    c.defineCommand('openaiBreakerReport', { lua: BREAKER_REPORT });
  }

  /** Whether the client is connected and ready. */
  get ready(): boolean {
    return this.client.status === 'ready';
  }

  /**
   * False while a cluster master is down or `cluster_state` is not `ok` (always true on one Redis:
   * there, an operation's success is the health). The failure policy's state follows it.
   */
  get healthy(): boolean {
    return this.monitor ? this.monitor.health.healthy : true;
  }

  /** Called when `healthy` changes (cluster only). */
  set onHealthChange(fn: ((healthy: boolean, reason: string) => void) | undefined) {
    if (this.monitor) this.monitor.onChange = fn;
  }

  /** The cluster's health as last seen (undefined on one Redis). */
  clusterHealth(): ClusterHealth | undefined {
    return this.monitor?.health;
  }

  private k(key: string, suffix?: string): string {
    return `${this.prefix}${key.includes('{') ? key : `{${key}}`}${suffix ? `:${suffix}` : ''}`;
  }

  /** Runs `op` on the keys of one slot (`slotKey` is one of them), bounded by `commandTimeoutMs`. */
  private run<T>(slotKey: string | undefined, op: () => Promise<T>): Promise<T> {
    if (this.monitor && slotKey !== undefined) {
      const down = this.monitor.downReason(slotKey);
      if (down !== undefined) return Promise.reject(new StoreUnavailableError(down));
    }
    return new Promise<T>((resolve, reject) => {
      // Timers run before pending I/O is read: after a busy stretch of the event loop (GC, a burst of
      // requests) the reply may be waiting in the socket. Decide after the poll phase (setImmediate), so
      // only a Redis that really did not answer counts as a timeout (and trips the failure policy).
      const timer = setTimeout(
        () =>
          setImmediate(() => {
            const err = new StoreUnavailableError(`Redis did not answer within ${this.timeoutMs} ms`);
            if (slotKey !== undefined) this.monitor?.reportFailure(slotKey, err);
            reject(err);
          }),
        this.timeoutMs,
      );
      op().then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          if (slotKey !== undefined) this.monitor?.reportFailure(slotKey, err);
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
    const r = await this.consumeScript([{ key, windows, cost }]);
    return r.results[0];
  }

  /**
   * The consumes of `ops` as one atomic operation: one script, one round trip (see
   * `OpenAIStore.consumeMany`). On a cluster, ops whose keys span several slots run as one consume per
   * key, the admitted ones given back when one refuses (`consumeEach`).
   */
  consumeMany(ops: readonly ConsumeOp[]): Promise<ConsumeManyResult> {
    if (this.monitor && !sameSlot(ops.map((op) => this.k(op.key)))) return consumeEach(this, ops);
    return this.consumeScript(ops);
  }

  private async consumeScript(ops: readonly ConsumeOp[]): Promise<ConsumeManyResult> {
    const keys: string[] = [];
    const argv: Array<string | number> = [this.now ? this.now() : -1];
    for (const { key, windows, cost } of ops)
      for (const w of windows) {
        const k = this.k(key, w.name);
        if (w.startAt === undefined) keys.push(`${k}:sw`, `${k}:sl`);
        else keys.push(k, k);
        argv.push(
          Math.ceil(cost),
          w.limit,
          w.windowMs,
          w.startAt ?? -1,
          Math.max(0, Math.ceil(w.blockMs ?? 0)),
          slotMs(w),
        );
      }
    if (keys.length === 0) return { allowed: true, results: ops.map(() => ({ allowed: true, windows: [] })) };
    const out = await this.run(keys[0], () => this.scripted.openaiConsume(keys.length, ...keys, ...argv));
    /** 1-based index of the first window (over all ops) that refused; 0: admitted. */
    const refusedAt = Number(out[0]);
    const allowed = refusedAt === 0;
    let at = 0;
    let refused: number | undefined;
    const results = ops.map(({ windows }, o): ConsumeResult => {
      let blockedBy: WindowState | undefined;
      const states = windows.map((w): WindowState => {
        const j = at++;
        const st = {
          name: w.name,
          limit: w.limit,
          start: Number(out[2 + j * 4]),
          used: Number(out[3 + j * 4]),
          remaining: Number(out[4 + j * 4]),
          resetMs: Number(out[5 + j * 4]),
        };
        if (j === refusedAt - 1) {
          blockedBy = st;
          refused = o;
        }
        return st;
      });
      return blockedBy ? { allowed, windows: states, blockedBy } : { allowed, windows: states };
    });
    return allowed ? { allowed, results } : { allowed, results, refused };
  }

  async adjust(key: string, windows: readonly WindowRef[], delta: number): Promise<void> {
    if (windows.length === 0 || delta === 0) return;
    await this.adjustScript([{ key, windows, delta }]);
  }

  /**
   * The adjusts of `ops` in one script (one round trip), with the counts after them (see
   * `OpenAIStore.adjustMany`); on a cluster, one script per slot when the keys span several.
   */
  async adjustMany(ops: readonly AdjustOp[]): Promise<AdjustManyResult> {
    if (!this.monitor || sameSlot(ops.map((op) => this.k(op.key)))) return this.adjustScript(ops);
    return Promise.all(ops.map(async (op) => (await this.adjustScript([op]))[0]));
  }

  private async adjustScript(ops: readonly AdjustOp[]): Promise<AdjustManyResult> {
    const keys: string[] = [];
    const argv: number[] = [];
    for (const { key, windows, delta } of ops) {
      const d = delta > 0 ? Math.ceil(delta) : -Math.ceil(-delta);
      for (const w of windows) {
        const k = this.k(key, w.name);
        keys.push(k, `${k}:sw`);
        argv.push(d, w.start);
      }
    }
    if (keys.length === 0) return ops.map(() => []);
    const out = await this.run(keys[0], () => this.scripted.openaiAdjust(keys.length, ...keys, ...argv));
    let at = 0;
    return ops.map(({ windows }) =>
      windows.map(() => {
        const v = Number(out[at++]);
        return v < 0 ? undefined : v;
      }),
    );
  }

  async incrementFields(key: string, fields: Readonly<Record<string, number>>, ttlMs: number): Promise<void> {
    const pairs = Object.entries(fields).flatMap(([f, v]) => [f, v]);
    if (pairs.length === 0) return;
    await this.run(this.k(key), () =>
      this.scripted.openaiIncrementFields(1, this.k(key), Math.ceil(ttlMs), ...pairs),
    );
  }

  async getFields(key: string): Promise<Record<string, number>> {
    const raw = await this.run(this.k(key), () => this.client.hgetall(this.k(key)));
    const out: Record<string, number> = {};
    for (const [f, v] of Object.entries(raw)) out[f] = Number(v);
    return out;
  }

  async get(key: string): Promise<string | undefined> {
    return (await this.run(this.k(key), () => this.client.get(this.k(key)))) ?? undefined;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    await this.run(this.k(key), () =>
      this.client.set(this.k(key), value, 'PX', Math.max(1, Math.ceil(ttlMs))),
    );
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    return (
      (await this.run(this.k(key), () =>
        this.client.set(this.k(key), value, 'PX', Math.max(1, Math.ceil(ttlMs)), 'NX'),
      )) === 'OK'
    );
  }

  /**
   * Throws when the store cannot serve. On a cluster: asks every master for `CLUSTER INFO` (a cluster
   * answers PING while it refuses keys), each bounded by `commandTimeoutMs`, and throws unless every
   * master answers with `cluster_state:ok`.
   */
  async ping(): Promise<void> {
    if (!this.monitor) {
      await this.run(undefined, () => this.client.ping());
      return;
    }
    const h = await this.monitor.check();
    if (!h.healthy)
      throw new StoreUnavailableError(
        h.mastersDown.length
          ? `Redis Cluster masters down: ${h.mastersDown.join(', ')} (cluster_state: ${h.state})`
          : `Redis Cluster cluster_state is ${h.state}`,
      );
  }

  /**
   * The boot check: waits until the client is ready and, on a cluster, until every master answers a
   * `CLUSTER INFO` with `cluster_state:ok` (each connected now, not lazily by the first burst of traffic);
   * then starts the cluster's background health check. All within `timeoutMs`.
   * @throws StoreUnavailableError naming what did not answer.
   */
  async connect(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    // A client created with lazyConnect (given by the app) connects on its first command; start it now.
    if (this.client.status === 'wait') this.client.connect().catch(() => undefined);
    await this.waitReady(timeoutMs);
    if (!this.monitor) {
      await withTimeout(this.client.ping(), Math.max(1, deadline - Date.now()));
      return;
    }
    let last: ClusterHealth | undefined;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      last = await this.monitor.check(Math.max(1, left));
      if (last.healthy && last.state === 'ok' && last.masters.length > 0) {
        this.monitor.start();
        return;
      }
      await new Promise((r) => setTimeout(r, Math.min(100, Math.max(1, deadline - Date.now()))));
    }
    throw new StoreUnavailableError(
      last && last.masters.length
        ? `Redis Cluster not healthy within ${timeoutMs} ms (cluster_state: ${last.state}${last.mastersDown.length ? `, masters not answering: ${last.mastersDown.join(', ')}` : ''})`
        : `Redis Cluster has no master holding slots after ${timeoutMs} ms`,
    );
  }

  /**
   * True when this plain client is connected to a Redis Cluster node (`INFO cluster` says
   * `cluster_enabled:1`), where keys of other masters' slots would fail with `MOVED`.
   */
  async pointsAtCluster(timeoutMs: number): Promise<boolean> {
    if (this.monitor) return true;
    const info = await withTimeout(this.client.info('cluster'), timeoutMs);
    return /cluster_enabled:1/.test(info);
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
    await this.channels?.close();
    this.monitor?.stop();
    if (this.owned) {
      try {
        await this.client.quit();
      } catch {
        this.client.disconnect();
      }
    }
  }

  async acquireSlot(key: string, id: string, limit: number, ttlMs: number): Promise<SlotResult> {
    const k = this.k(key);
    const out = await this.run(k, () =>
      this.scripted.openaiAcquireSlot(
        1,
        k,
        id,
        limit,
        Math.max(1, Math.ceil(ttlMs)),
        this.now ? this.now() : -1,
      ),
    );
    return {
      acquired: Number(out[0]) === 1,
      held: Number(out[1]),
      retryAfterMs: Math.max(0, Number(out[2])),
    };
  }

  async releaseSlot(key: string, id: string): Promise<void> {
    const k = this.k(key);
    await this.run(k, () => this.client.zrem(k, id));
  }

  async breakerAdmit(key: string, probeLeaseMs: number): Promise<BreakerAdmission> {
    const k = this.k(key);
    const out = await this.run(k, () =>
      this.scripted.openaiBreakerAdmit(
        1,
        k,
        Math.max(1, Math.ceil(probeLeaseMs)),
        this.now ? this.now() : -1,
      ),
    );
    return {
      state: BREAKER_STATES[Number(out[0])] ?? 'closed',
      allowed: Number(out[1]) === 1,
      probe: Number(out[2]) === 1,
      failures: Number(out[3]),
      retryAfterMs: Math.max(0, Number(out[4])),
      changed: Number(out[5]) === 1,
    };
  }

  async breakerReport(
    key: string,
    ok: boolean,
    threshold: number,
    cooldownMs: number,
    probe: boolean,
  ): Promise<BreakerReport> {
    const k = this.k(key);
    const out = await this.run(k, () =>
      this.scripted.openaiBreakerReport(
        1,
        k,
        ok ? 1 : 0,
        threshold,
        Math.max(1, Math.ceil(cooldownMs)),
        probe ? 1 : 0,
        this.now ? this.now() : -1,
      ),
    );
    const state = BREAKER_STATES[Number(out[0])] ?? 'closed';
    const from = BREAKER_STATES[Number(out[1])] ?? 'closed';
    return { state, from, changed: state !== from };
  }
  private leaseDefined = false;

  /**
   * Leases of a calendar budget (`OpenAIStore.budgetLease`): one script on the windows of `key` (hashes
   * `{ s, c }`, as `consume` keeps them) and its lease records (`<key>:leases`), all in the key's slot.
   */
  async budgetLease(
    key: string,
    windows: readonly WindowLimit[],
    op: import('./openai-store.interface.js').BudgetLeaseOp,
  ): Promise<import('./openai-store.interface.js').BudgetLeaseResult> {
    if (!this.leaseDefined) {
      (this.client as unknown as { defineCommand(name: string, def: { lua: string }): void }).defineCommand(
        'openaiBudgetLease',
        { lua: BUDGET_LEASE },
      );
      this.leaseDefined = true;
    }
    const keys = [...windows.map((w) => this.k(key, w.name)), this.k(key, 'leases')];
    const p =
      op.op === 'take'
        ? [op.maxAmount, op.divisor, op.minAmount, op.threshold]
        : op.op === 'raise'
          ? [op.cap, op.used, 0, 0]
          : op.op === 'return'
            ? [op.used, op.cap, 0, 0]
            : op.op === 'hold'
              ? [op.cost, 0, 0, 0]
              : [0, 0, 0, 0];
    const argv: Array<string | number> = [
      op.op,
      this.now ? this.now() : -1,
      'id' in op ? op.id : '',
      'ttlMs' in op ? Math.max(1, Math.ceil(op.ttlMs)) : 0,
      ...p.map((x) => Math.max(0, Math.ceil(x))),
    ];
    for (const w of windows) argv.push(w.name, w.limit, w.windowMs, w.startAt ?? 0);
    const out = await this.run(keys[0], () =>
      (
        this.client as unknown as { openaiBudgetLease(...a: Array<string | number>): Promise<number[]> }
      ).openaiBudgetLease(keys.length, ...keys, ...argv),
    );
    const now = Number(out[1]);
    const states: Array<import('./openai-store.interface.js').BudgetLeaseWindow> = windows.map((w, i) => {
      const start = Number(out[5 + i * 3]);
      const used = Number(out[6 + i * 3]);
      return {
        name: w.name,
        limit: w.limit,
        start,
        used,
        remaining: Math.max(0, w.limit - used),
        resetMs: Math.max(0, start + w.windowMs - now),
        leased: Number(out[7 + i * 3]),
      };
    });
    const refused = Number(out[4]);
    return {
      ok: Number(out[0]) === 1,
      granted: Number(out[2]),
      cap: Number(out[3]),
      windows: states,
      ...(refused > 0 ? { blockedBy: states[refused - 1] } : {}),
    };
  }

  // State broadcast and breaker reads (the optional OpenAIStore operations; see redis-channels.ts).
  private channels?: RedisChannels;

  /** `OpenAIStore.publish`: one PUBLISH on `<keyPrefix><channel>`. */
  async publish(channel: string, message: string): Promise<void> {
    await this.run(undefined, () => this.client.publish(`${this.prefix}${channel}`, message));
  }

  /** `OpenAIStore.subscribe`, on a subscriber connection of the store's own (closed with the store). */
  subscribe(channel: string, listener: ChannelListener): Promise<{ close(): Promise<void> }> {
    this.channels ??= new RedisChannels(this.client, Math.max(this.timeoutMs, 5_000));
    return this.channels.subscribe(`${this.prefix}${channel}`, listener);
  }

  /** `OpenAIStore.breakerPeek`: one read-only script on the breaker's hash. */
  async breakerPeek(key: string): Promise<Pick<BreakerAdmission, 'state' | 'failures' | 'retryAfterMs'>> {
    const k = this.k(key);
    const out = await this.run(k, () => peekBreaker(this.client, k, this.now ? this.now() : -1));
    return {
      state: BREAKER_STATES[Number(out[0])] ?? 'closed',
      failures: Number(out[1]),
      retryAfterMs: Math.max(0, Number(out[2])),
    };
  }
}

/** `CLUSTER INFO` of one node over a short-lived plain connection (a master the cluster client lost). */
async function probeNode(
  RedisCtor: RedisCtor | undefined,
  cluster: Cluster,
  host: string,
  port: number,
  timeoutMs: number,
): Promise<string> {
  if (!RedisCtor) {
    // A given Cluster without the constructor at hand: its own duplicate-free way is a fresh Redis of
    // the same class as its node connections.
    const sample = cluster.nodes('all')[0];
    if (!sample) throw new Error('no node connection to probe with');
    RedisCtor = sample.constructor as RedisCtor;
  }
  const shared = cluster.options.redisOptions ?? {};
  const probe = new RedisCtor(`redis://${host}:${port}`, {
    ...shared,
    host,
    port,
    lazyConnect: true,
    enableOfflineQueue: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: timeoutMs,
  });
  probe.on('error', () => undefined);
  try {
    return String(
      await withTimeout(
        probe.connect().then(() => probe.cluster('INFO')),
        timeoutMs,
      ),
    );
  } finally {
    probe.disconnect();
  }
}

// Leases of a calendar budget (see `OpenAIStore.budgetLease` and BudgetService). KEYS: the hash `{ s, c }`
// of each window (as CONSUME keeps a calendar window), then the lease records: a hash, field = lease id,
// value = `granted,cap,used,expiresAt,<window>=<start>,...`. ARGV: op, now (< 0: Redis TIME), id, ttlMs,
// four numbers of the op, then (name, limit, windowMs, startAt) per window. Windows of `take`, `hold`
// and `peek` are the current periods (a stored window of another period restarts at zero, as in
// CONSUME); those of `raise` and `return` are the lease's periods, compared, never reset. Expired
// records are reclaimed first: `granted - cap` back to the windows still in their period.
// Returns: ok, now, granted, cap, index of the window that refused a hold (0: none), then
// (start, used, leased) per window.
const BUDGET_LEASE = `
local op = ARGV[1]
${luaNow(2)}
local id = ARGV[3]
local ttl = tonumber(ARGV[4])
local p1, p2, p3, p4 = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local n = #KEYS - 1
local L = KEYS[#KEYS]
local current = op == 'take' or op == 'hold' or op == 'peek'
local function fmt(x) return string.format('%.0f', x) end
local names, limits, wins, given, starts, used, dirty = {}, {}, {}, {}, {}, {}, {}
local horizon = 0
for i = 1, n do
  local a = 9 + (i - 1) * 4
  names[i] = ARGV[a]
  limits[i] = tonumber(ARGV[a + 1])
  wins[i] = tonumber(ARGV[a + 2])
  given[i] = tonumber(ARGV[a + 3])
  local v = redis.call('HMGET', KEYS[i], 's', 'c')
  local s = tonumber(v[1])
  local c = tonumber(v[2]) or 0
  if current and (s == nil or s ~= given[i]) then
    s = given[i]
    c = 0
    dirty[i] = true
  end
  starts[i] = s
  used[i] = c
  if s ~= nil and s + wins[i] > horizon then horizon = s + wins[i] end
end
local function parse(v)
  local f = {}
  for part in string.gmatch(v, '[^,]+') do f[#f + 1] = part end
  local r = { g = tonumber(f[1]), cap = tonumber(f[2]), u = tonumber(f[3]), exp = tonumber(f[4]), at = {}, raw = {} }
  for j = 5, #f do
    local e = string.find(f[j], '=', 1, true)
    r.at[string.sub(f[j], 1, e - 1)] = tonumber(string.sub(f[j], e + 1))
    r.raw[#r.raw + 1] = f[j]
  end
  return r
end
local function enc(r)
  return fmt(r.g) .. ',' .. fmt(r.cap) .. ',' .. fmt(r.u) .. ',' .. fmt(r.exp) .. ',' .. table.concat(r.raw, ',')
end
local function giveBack(at, amount)
  if amount <= 0 then return end
  for i = 1, n do
    if starts[i] ~= nil and at[names[i]] == starts[i] then
      used[i] = math.max(0, used[i] - amount)
      dirty[i] = true
    end
  end
end
local all = redis.call('HGETALL', L)
local recs = {}
for j = 1, #all, 2 do
  local r = parse(all[j + 1])
  if r.exp <= now then
    giveBack(r.at, r.g - r.cap)
    redis.call('HDEL', L, all[j])
  else
    recs[all[j]] = r
  end
end
local ok, granted, cap, refused = 1, 0, 0, 0
if op == 'take' then
  local room = -1
  for i = 1, n do
    local r = limits[i] - used[i]
    if room < 0 or r < room then room = r end
  end
  if room < 0 then room = 0 end
  local g = math.min(p1, math.floor(room / p2))
  if room < p4 or g < p3 or g <= 0 then
    ok = 0
  else
    for i = 1, n do
      used[i] = used[i] + g
      dirty[i] = true
    end
    local r = { g = g, cap = math.min(g, math.max(math.ceil(g / 4), p3)), u = 0, exp = now + ttl, at = {}, raw = {} }
    for i = 1, n do
      r.at[names[i]] = starts[i]
      r.raw[#r.raw + 1] = names[i] .. '=' .. fmt(starts[i])
    end
    recs[id] = r
    redis.call('HSET', L, id, enc(r))
    granted = g
    cap = r.cap
  end
elseif op == 'raise' then
  local r = recs[id]
  if r == nil then
    ok = 0
  else
    r.cap = math.min(r.g, math.max(r.cap, p1))
    r.u = math.min(r.cap, p2)
    r.exp = now + ttl
    redis.call('HSET', L, id, enc(r))
    granted = r.g
    cap = r.cap
  end
elseif op == 'return' then
  local r = recs[id]
  if r ~= nil then
    giveBack(r.at, r.g - p1)
    recs[id] = nil
    redis.call('HDEL', L, id)
  else
    local at = {}
    for i = 1, n do at[names[i]] = given[i] end
    giveBack(at, p2 - p1)
  end
elseif op == 'hold' then
  for i = 1, n do
    if used[i] + p1 > limits[i] then
      refused = i
      break
    end
  end
  if refused > 0 then
    ok = 0
  else
    for i = 1, n do
      used[i] = used[i] + p1
      dirty[i] = true
    end
  end
end
for i = 1, n do
  if dirty[i] then
    redis.call('HSET', KEYS[i], 's', fmt(starts[i]), 'c', fmt(used[i]))
    redis.call('PEXPIREAT', KEYS[i], starts[i] + wins[i])
  end
end
if redis.call('HLEN', L) > 0 and horizon > now then redis.call('PEXPIREAT', L, math.max(horizon, now + ttl)) end
local out = { ok, now, granted, cap, refused }
for i = 1, n do
  local leased = 0
  for _, r in pairs(recs) do
    if starts[i] ~= nil and r.at[names[i]] == starts[i] then leased = leased + r.g - r.u end
  end
  out[#out + 1] = starts[i] or 0
  out[#out + 1] = used[i]
  out[#out + 1] = leased
end
return out
`;
