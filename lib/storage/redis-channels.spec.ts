import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OwnRedis, redisClient, sharedRedisUrl, uniquePrefix, waitFor } from '../../test/support/redis.js';
import { OwnRedisCluster, clusterAvailable } from '../../test/support/redis-cluster.js';
import { RedisStore } from './redis.store.js';
import { ResilientStore } from './resilient.store.js';

const url = sharedRedisUrl();

/** Messages received on `channel` of `store`, and the subscription's lost / resumed calls. */
async function listen(store: RedisStore | ResilientStore, channel: string) {
  const got = { messages: [] as string[], lost: 0, resumed: 0 };
  const sub = await store.subscribe!(channel, {
    message: (m) => got.messages.push(m),
    lost: () => got.lost++,
    resumed: () => got.resumed++,
  });
  return { got, sub };
}

/** Connections of the server named by CLIENT LIST whose last command was `cmd`. */
async function connectionsIn(admin: Redis, cmd: string): Promise<number> {
  const list = String(await admin.call('CLIENT', 'LIST'));
  return list.split('\n').filter((l) => l.includes(`cmd=${cmd}`)).length;
}

describe.skipIf(!url)('RedisStore: state broadcast and breaker reads (real Redis)', () => {
  let admin: Redis;
  beforeAll(() => {
    admin = redisClient(url);
  });
  afterAll(() => {
    admin.disconnect();
  });

  it('publish reaches every subscriber of the channel under the same key prefix, on its own connection', async () => {
    const prefix = uniquePrefix('channels');
    const a = new RedisStore({ url, keyPrefix: prefix }, Redis);
    const b = new RedisStore({ url, keyPrefix: prefix }, Redis);
    const other = new RedisStore({ url, keyPrefix: uniquePrefix('channels-other') }, Redis);
    await a.waitReady(5_000);
    try {
      const la = await listen(a, 'sync:test');
      const lb = await listen(b, 'sync:test');
      const lo = await listen(other, 'sync:test');
      const seen: string[] = [];
      const spy = admin.duplicate();
      await spy.subscribe(`${prefix}sync:test`);
      spy.on('message', (_c: string, m: string) => seen.push(m));
      await a.publish('sync:test', 'one');
      await waitFor('both subscribers', () => la.got.messages.length === 1 && lb.got.messages.length === 1);
      expect([la.got.messages, lb.got.messages]).toEqual([['one'], ['one']]);
      await waitFor('the raw channel', () => seen.length === 1);
      expect(lo.got.messages).toEqual([]);
      // The store's own client still serves commands (the subscription is on another connection).
      expect(await a.get('x')).toBeUndefined();
      await lb.sub.close();
      await a.publish('sync:test', 'two');
      await waitFor('A', () => la.got.messages.length === 2);
      await a.get('x'); // a round trip after the publish: B would have had it by now
      expect(lb.got.messages).toEqual(['one']);
      spy.disconnect();
    } finally {
      await a.close();
      await b.close();
      await other.close();
    }
  });

  it('close() ends the subscriber connection', async () => {
    const s = new RedisStore({ url, keyPrefix: uniquePrefix('channels-close') }, Redis);
    const before = await connectionsIn(admin, 'subscribe');
    await listen(s, 'sync:x');
    expect(await connectionsIn(admin, 'subscribe')).toBe(before + 1);
    await s.close();
    await waitFor('the subscriber to go', async () => (await connectionsIn(admin, 'subscribe')) === before);
  });

  it('breakerPeek reads a breaker without changing it: no probe is taken', async () => {
    let clock = 1_800_000_000_000;
    const prefix = uniquePrefix('peek');
    const s = new RedisStore({ url, keyPrefix: prefix, now: () => clock }, Redis);
    await s.waitReady(5_000);
    try {
      expect(await s.breakerPeek('breaker:m')).toEqual({ state: 'closed', failures: 0, retryAfterMs: 0 });
      await s.breakerReport('breaker:m', false, 2, 1_000, false);
      expect(await s.breakerPeek('breaker:m')).toEqual({ state: 'closed', failures: 1, retryAfterMs: 0 });
      await s.breakerReport('breaker:m', false, 2, 1_000, false);
      clock += 400;
      expect(await s.breakerPeek('breaker:m')).toEqual({ state: 'open', failures: 2, retryAfterMs: 600 });
      clock += 600;
      // The cool-down over: a peek says so and leaves the probe to the next admission.
      expect(await s.breakerPeek('breaker:m')).toEqual({ state: 'open', failures: 2, retryAfterMs: 0 });
      expect(await s.breakerPeek('breaker:m')).toMatchObject({ state: 'open' });
      const probe = await s.breakerAdmit('breaker:m', 5_000);
      expect(probe).toMatchObject({ allowed: true, probe: true, state: 'half-open' });
      clock += 1_000;
      expect(await s.breakerPeek('breaker:m')).toEqual({
        state: 'half-open',
        failures: 2,
        retryAfterMs: 4_000,
      });
    } finally {
      await s.close();
    }
  });

  it('ResilientStore passes them through to the primary', async () => {
    const prefix = uniquePrefix('channels-resilient');
    const primary = new RedisStore({ url, keyPrefix: prefix }, Redis);
    await primary.waitReady(5_000);
    const s = new ResilientStore(primary, 'memory');
    try {
      const l = await listen(s, 'sync:r');
      await s.publish!('sync:r', 'hello');
      await waitFor('the message', () => l.got.messages.length === 1);
      expect(await s.breakerPeek!('breaker:m')).toMatchObject({ state: 'closed' });
    } finally {
      await s.close();
    }
  });
});

describe.skipIf(!url)('RedisStore subscription across a Redis restart', () => {
  let redis: OwnRedis;
  beforeAll(async () => {
    redis = await OwnRedis.start();
  });
  afterAll(async () => {
    await redis.stop();
  });

  it('is lost when Redis goes, resumed (subscribed again) when it is back', async () => {
    const s = new RedisStore({ url: redis.url, keyPrefix: 'p:' }, Redis);
    await s.waitReady(5_000);
    const l = await listen(s, 'sync:restart');
    try {
      await redis.stop();
      await waitFor('the subscription to be lost', () => l.got.lost === 1, 5_000);
      await redis.start();
      await waitFor('the subscription to resume', () => l.got.resumed === 1, 10_000);
      await waitFor('the store client', () => s.ready, 10_000);
      // Resumed means subscribed: a message published now arrives.
      await s.publish('sync:restart', 'after');
      await waitFor('the message', () => l.got.messages.includes('after'));
      expect(l.got).toMatchObject({ lost: 1, resumed: 1 });
    } finally {
      await s.close();
    }
  });
});

describe.skipIf(!clusterAvailable())('RedisStore channels on a Redis Cluster (3 masters)', () => {
  let cluster: OwnRedisCluster;
  beforeAll(async () => {
    cluster = await OwnRedisCluster.start({ masters: 3 });
  }, 60_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  it('a PUBLISH through one instance reaches a subscriber of another; breakerPeek reads in its slot', async () => {
    const prefix = uniquePrefix('channels-cluster');
    const open = async () => {
      const s = new RedisStore({ cluster: { nodes: cluster.nodes }, keyPrefix: prefix }, Redis, Cluster);
      await s.connect(10_000);
      return s;
    };
    const [a, b] = [await open(), await open()];
    try {
      const lb = await listen(b, 'sync:c');
      for (let i = 0; i < 5; i++) await a.publish('sync:c', `m${i}`);
      await waitFor('every message', () => lb.got.messages.length === 5, 5_000);
      // Each PUBLISH goes to some node, which forwards it: on a cluster, their order is not kept.
      expect([...lb.got.messages].sort()).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
      await a.breakerReport('breaker:m', false, 1, 60_000, false);
      expect(await b.breakerPeek('breaker:m')).toMatchObject({ state: 'open', failures: 1 });
    } finally {
      await a.close();
      await b.close();
    }
  });
});
