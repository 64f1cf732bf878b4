import type { Cluster, Redis } from 'ioredis';
import { withTimeout } from './redis-cluster.js';

/** Receives a channel's messages: see `OpenAIStore.subscribe`. */
export interface ChannelListener {
  message(message: string): void;
  lost?(): void;
  resumed?(): void;
}

/**
 * The pub/sub side of a Redis store (`OpenAIStore.subscribe`): one subscriber connection of its own (a
 * connection in subscriber mode serves no other command), duplicated from the store's client (same
 * server or cluster, same credentials), opened with the first subscription and closed with the last.
 * ioredis subscribes it again after a reconnect; listeners are told when it is lost and, once a PING
 * sent after the new SUBSCRIBE is answered (the subscription is in force), that it is resumed. On a
 * Redis Cluster, ioredis subscribes on one node: a PUBLISH on any node reaches every node.
 */
export class RedisChannels {
  private sub?: Redis | Cluster;
  private readonly listeners = new Map<string, Set<ChannelListener>>();
  /** SUBSCRIBE of each channel, acknowledged or pending. */
  private readonly acks = new Map<string, Promise<unknown>>();
  private state: 'connecting' | 'up' | 'lost' = 'connecting';

  /** `timeoutMs`: longest wait for a subscription, the connection's opening included. */
  constructor(
    private readonly client: Redis | Cluster,
    private readonly timeoutMs: number,
  ) {}

  async subscribe(channel: string, listener: ChannelListener): Promise<{ close(): Promise<void> }> {
    const sub = this.connection();
    let set = this.listeners.get(channel);
    if (!set) this.listeners.set(channel, (set = new Set()));
    set.add(listener);
    let ack = this.acks.get(channel);
    if (!ack) {
      ack = sub.subscribe(channel);
      this.acks.set(channel, ack);
    }
    try {
      await withTimeout(ack, this.timeoutMs);
    } catch (err) {
      if (this.acks.get(channel) === ack) this.acks.delete(channel);
      await this.remove(channel, listener);
      throw err;
    }
    return { close: () => this.remove(channel, listener) };
  }

  private connection(): Redis | Cluster {
    if (this.sub) return this.sub;
    this.state = 'connecting';
    // Commands wait for the connection (a subscription made before it is up, or during a reconnect)
    // instead of failing at once as the store's client does: `subscribe` bounds the wait.
    const sub = (this.client as Cluster).isCluster
      ? (this.client as Cluster).duplicate([], { enableOfflineQueue: true, lazyConnect: false })
      : (this.client as Redis).duplicate({
          enableOfflineQueue: true,
          lazyConnect: false,
          autoResubscribe: true,
        });
    sub.on('error', () => undefined);
    sub.on('node error', () => undefined);
    sub.on('message', (channel: string, message: string) => {
      for (const l of this.listeners.get(channel) ?? []) {
        try {
          l.message(message);
        } catch {
          // a listener's failure is its own: the others still get the message
        }
      }
    });
    sub.on('close', () => {
      if (this.sub !== sub || this.state !== 'up') return;
      this.state = 'lost';
      this.each((l) => l.lost?.());
    });
    sub.on('ready', () => {
      if (this.sub !== sub) return;
      if (this.state !== 'lost') {
        this.state = 'up';
        return;
      }
      // ioredis queues the new SUBSCRIBE right after 'ready': a PING queued after it answers once it
      // is in force, so nothing published from then on is missed.
      setImmediate(() => {
        sub.ping().then(
          () => {
            if (this.sub !== sub || this.state !== 'lost') return;
            this.state = 'up';
            this.each((l) => l.resumed?.());
          },
          () => undefined,
        );
      });
    });
    this.sub = sub;
    return sub;
  }

  private each(fn: (l: ChannelListener) => void): void {
    for (const set of this.listeners.values())
      for (const l of set) {
        try {
          fn(l);
        } catch {
          // as for messages
        }
      }
  }

  private async remove(channel: string, listener: ChannelListener): Promise<void> {
    const set = this.listeners.get(channel);
    if (!set?.delete(listener) || set.size > 0) return;
    this.listeners.delete(channel);
    this.acks.delete(channel);
    if (this.listeners.size === 0) return this.close();
    await withTimeout(this.sub!.unsubscribe(channel), this.timeoutMs).catch(() => undefined);
  }

  /** Closes the subscriber connection (every subscription ends). */
  async close(): Promise<void> {
    const sub = this.sub;
    this.sub = undefined;
    this.listeners.clear();
    this.acks.clear();
    if (!sub) return;
    try {
      await withTimeout(sub.quit(), this.timeoutMs);
    } catch {
      sub.disconnect();
    }
  }
}

// A circuit breaker's hash as BREAKER_ADMIT and BREAKER_REPORT keep it (redis.store.ts), read without
// a change. ARGV: now (< 0: Redis' TIME). Returns: state, failures, ms until the cool-down (open) or
// the probe's lease (half-open) ends.
const BREAKER_PEEK = `
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local v = redis.call('HMGET', KEYS[1], 's', 'f', 'u', 'p')
local s = tonumber(v[1]) or 0
local f = tonumber(v[2]) or 0
if s == 1 then return { 1, f, math.max(0, (tonumber(v[3]) or 0) - now) } end
if s == 2 then return { 2, f, math.max(0, (tonumber(v[4]) or 0) - now) } end
return { 0, f, 0 }
`;

const peekDefined = new WeakSet<object>();

/** Runs BREAKER_PEEK on `key` (the full key): `[state 0/1/2, failures, ms]`. Loaded once per client. */
export function peekBreaker(client: Redis | Cluster, key: string, now: number): Promise<number[]> {
  const c = client as unknown as {
    defineCommand(name: string, def: { numberOfKeys: number; lua: string }): void;
    openaiBreakerPeek(key: string, now: number): Promise<number[]>;
  };
  if (!peekDefined.has(client)) {
    c.defineCommand('openaiBreakerPeek', { numberOfKeys: 1, lua: BREAKER_PEEK });
    peekDefined.add(client);
  }
  return c.openaiBreakerPeek(key, now);
}
