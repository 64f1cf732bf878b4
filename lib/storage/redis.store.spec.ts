import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  OwnRedis,
  RedisCommandLog,
  keysUnder,
  redisClient,
  sharedRedisUrl,
  uniquePrefix,
  waitFor,
} from '../../test/support/redis.js';
import type { WindowLimit } from './openai-store.interface.js';
import { RedisStore, StoreUnavailableError } from './redis.store.js';

const url = sharedRedisUrl();
const minute = (limit: number): WindowLimit => ({ name: 'minute', limit, windowMs: 60_000 });
const day = (limit: number): WindowLimit => ({ name: 'day', limit, windowMs: 86_400_000 });

describe.skipIf(!url)('RedisStore on a real Redis', () => {
  let admin: Redis;
  let prefix: string;
  let store: RedisStore;
  beforeAll(async () => {
    admin = redisClient(url);
    prefix = uniquePrefix('redis-store');
    store = new RedisStore({ url, keyPrefix: prefix }, Redis);
    await store.waitReady(5_000);
  });
  afterAll(async () => {
    await store.close();
    admin.disconnect();
  });

  it('consume is exact under 200 concurrent callers, over two windows', async () => {
    const results = await Promise.all(
      Array.from({ length: 200 }, () => store.consume('conc', [minute(50), day(1_000)], 1)),
    );
    expect(results.filter((r) => r.allowed)).toHaveLength(50);
    const refused = results.filter((r) => !r.allowed);
    expect(refused).toHaveLength(150);
    expect(refused[0].blockedBy).toMatchObject({ name: 'minute', used: 50, remaining: 0 });
    expect(await admin.hget(`${prefix}{conc}:minute:sw`, 'n')).toBe('50');
    // the refused calls counted against no window
    expect(await admin.hget(`${prefix}{conc}:day:sw`, 'n')).toBe('50');
  });

  it('reports used, remaining, start and resetMs; a refused call adds nothing', async () => {
    const a = await store.consume('r', [minute(10)], 4);
    expect(a.allowed).toBe(true);
    expect(a.windows[0]).toMatchObject({ name: 'minute', limit: 10, used: 4, remaining: 6 });
    expect(a.windows[0].resetMs).toBeGreaterThan(0);
    expect(a.windows[0].resetMs).toBeLessThanOrEqual(60_000);
    const b = await store.consume('r', [minute(10)], 7);
    expect(b).toMatchObject({ allowed: false, blockedBy: { used: 4, remaining: 6 } });
    // (was: the same window start; a sliding window's start is the log entry the call would count in)
    expect(b.windows[0].start).toBeGreaterThanOrEqual(a.windows[0].start);
    expect((await store.consume('r', [minute(10)], 6)).windows[0]).toMatchObject({ used: 10, remaining: 0 });
  });

  it('a window restarts when its time is up (Redis clock)', async () => {
    const w = { name: 'tiny', limit: 1, windowMs: 80 };
    expect((await store.consume('roll', [w], 1)).allowed).toBe(true);
    expect((await store.consume('roll', [w], 1)).allowed).toBe(false);
    await waitFor(
      'the window to roll over',
      async () => (await store.consume('roll', [w], 1)).allowed,
      3_000,
      20,
    );
  });

  it('adjust is atomic under concurrency, never goes below 0, and ignores a rolled-over window', async () => {
    const first = await store.consume('adj', [minute(10_000)], 1_000);
    const ref = first.windows.map((w) => ({ name: w.name, start: w.start }));
    await Promise.all(Array.from({ length: 200 }, () => store.adjust('adj', ref, -1)));
    expect((await store.consume('adj', [minute(10_000)], 0)).windows[0].used).toBe(800);
    await Promise.all(Array.from({ length: 100 }, (_, i) => store.adjust('adj', ref, i % 2 ? 3 : -3)));
    expect((await store.consume('adj', [minute(10_000)], 0)).windows[0].used).toBe(800);
    await store.adjust('adj', ref, -5_000);
    expect((await store.consume('adj', [minute(10_000)], 0)).windows[0].used).toBe(0);

    // a fixed window moves on (next period); the old reservation's settlement leaves the new one alone
    const p1 = Date.now() - 10_000;
    const old = await store.consume('adj-fixed', [{ ...day(100), startAt: p1 }], 40);
    const p2 = p1 + 5_000;
    const fresh = await store.consume('adj-fixed', [{ ...day(100), startAt: p2 }], 10);
    expect(fresh.windows[0]).toMatchObject({ used: 10, start: p2 });
    await store.adjust(
      'adj-fixed',
      old.windows.map((w) => ({ name: w.name, start: w.start })),
      -40,
    );
    await store.adjust(
      'adj-fixed',
      old.windows.map((w) => ({ name: w.name, start: w.start })),
      25,
    );
    expect((await store.consume('adj-fixed', [{ ...day(100), startAt: p2 }], 0)).windows[0].used).toBe(10);
    // adjust of an absent key creates nothing
    await store.adjust('adj-absent', ref, 5);
    expect(await admin.exists(`${prefix}{adj-absent}:minute`)).toBe(0);
  });

  it('keys carry the prefix and a {hash tag}, and expire with their window', async () => {
    const p = uniquePrefix('keys');
    const s = new RedisStore({ client: admin, keyPrefix: p });
    await s.consume('rl:req:user%3Aalice', [minute(5), day(50)], 1);
    await s.incrementFields('usage:alice:2024-01-01', { requests: 1 }, 60_000);
    await s.set('cache:abc', 'v', 60_000);
    // a sliding window is a hash (`:sw`, units per log entry) and a list (`:sl`, the log)
    expect(await keysUnder(admin, p)).toEqual([
      `${p}{cache:abc}`,
      `${p}{rl:req:user%3Aalice}:day:sl`,
      `${p}{rl:req:user%3Aalice}:day:sw`,
      `${p}{rl:req:user%3Aalice}:minute:sl`,
      `${p}{rl:req:user%3Aalice}:minute:sw`,
      `${p}{usage:alice:2024-01-01}`,
    ]);
    for (const suffix of ['sw', 'sl']) {
      const ttl = await admin.pttl(`${p}{rl:req:user%3Aalice}:minute:${suffix}`);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(60_000);
      expect(await admin.pttl(`${p}{rl:req:user%3Aalice}:day:${suffix}`)).toBeGreaterThan(60_000);
    }
  });

  it('two instances on one Redis hold exactly the limit across both (requests and weighted tokens)', async () => {
    const other = new RedisStore({ url, keyPrefix: prefix }, Redis);
    await other.waitReady(5_000);
    try {
      const stores = [store, other];
      const second = [{ name: 'second', limit: 7, windowMs: 1_000 }, minute(100)];
      const results = await Promise.all(
        Array.from({ length: 600 }, (_, i) => stores[i % 2].consume('two-req', second, 1)),
      );
      expect(results.filter((r) => r.allowed)).toHaveLength(7);
      expect(results.filter((r, i) => i % 2 === 1 && !r.allowed).length).toBeGreaterThan(250);
      // tokens: 10,000 per minute, costs of 1 to 999 from both instances
      const costs = Array.from({ length: 400 }, (_, i) => 1 + ((i * 7919) % 999));
      const tok = await Promise.all(
        costs.map((c, i) => stores[i % 2].consume('two-tok', [minute(10_000)], c)),
      );
      const admitted = costs.filter((_, i) => tok[i].allowed).reduce((n, c) => n + c, 0);
      expect(admitted).toBeLessThanOrEqual(10_000);
      expect(admitted).toBeGreaterThan(9_000);
      expect((await other.consume('two-tok', [minute(10_000)], 0)).windows[0].used).toBe(admitted);
      // a reservation taken on one instance is settled from the other
      const held = tok.find((r) => r.allowed)!;
      await other.adjust(
        'two-tok',
        held.windows.map((w) => ({ name: w.name, start: w.start })),
        -admitted,
      );
      expect((await store.consume('two-tok', [minute(10_000)], 0)).windows[0].used).toBeLessThan(admitted);
    } finally {
      await other.close();
    }
  });

  it('a blocked key lives in Redis until its block ends, then expires (bounded per key)', async () => {
    const p = uniquePrefix('blockttl');
    const s = new RedisStore({ client: admin, keyPrefix: p });
    const w = [{ name: 'second', limit: 1, windowMs: 1_000, blockMs: 30_000 }];
    expect((await s.consume('b', w, 1)).allowed).toBe(true);
    const refused = await s.consume('b', w, 1);
    expect(refused.blockedBy).toMatchObject({ remaining: 0 });
    expect(refused.blockedBy!.resetMs).toBeGreaterThan(29_000);
    const hashTtl = await admin.pttl(`${p}{b}:second:sw`);
    expect(hashTtl).toBeGreaterThan(29_000);
    expect(hashTtl).toBeLessThanOrEqual(30_000);
    // the log only needs to live one window after its newest hit
    expect(await admin.pttl(`${p}{b}:second:sl`)).toBeLessThanOrEqual(1_000);
    // past the window, still refused by the block
    await new Promise((r) => setTimeout(r, 1_050));
    const still = await s.consume('b', w, 1);
    expect(still.allowed).toBe(false);
    expect(still.blockedBy!.resetMs).toBeGreaterThan(27_000);
    expect(await admin.exists(`${p}{b}:second:sl`)).toBe(0);
  });

  it('calls its scripts by SHA, one round trip per operation', async () => {
    const s = new RedisStore({ url, keyPrefix: uniquePrefix('sha') }, Redis);
    await s.waitReady(5_000);
    const client = s.client as Redis;
    const log = await RedisCommandLog.start(admin, client);
    try {
      await s.consume('u', [minute(100), day(1_000)], 1);
      await s.adjust('u', [{ name: 'minute', start: 0 }], 1);
      await s.incrementFields('f', { a: 1, b: 2 }, 1_000);
      const warmup = await log.flush(client);
      // first use of each script on this connection: one command each (EVAL that loads it)
      expect(warmup.map((a) => a[0])).toEqual(['eval', 'eval', 'eval']);

      for (let i = 0; i < 20; i++) await s.consume('u', [minute(100), day(1_000)], 1);
      await s.adjust('u', [{ name: 'minute', start: 0 }], -1);
      await s.incrementFields('f', { a: 1 }, 1_000);
      const steady = await log.flush(client);
      expect(steady).toHaveLength(22);
      expect(steady.every((a) => a[0] === 'evalsha' && /^[0-9a-f]{40}$/.test(a[1]))).toBe(true);
      expect(new Set(steady.map((a) => a[1])).size).toBe(3);

      await Promise.all(Array.from({ length: 50 }, () => s.consume('u2', [minute(10)], 1)));
      expect((await log.flush(client)).filter((a) => a[0] === 'evalsha')).toHaveLength(50);
    } finally {
      log.stop();
      await s.close();
    }
  });

  it('a reply that arrived while the event loop was busy is not a timeout', async () => {
    const s = new RedisStore({ url, keyPrefix: uniquePrefix('busy'), commandTimeoutMs: 100 }, Redis);
    await s.waitReady(5_000);
    try {
      await s.consume('u', [minute(10)], 1);
      const pending = s.consume('u', [minute(10)], 1);
      // A CPU-bound stretch longer than the timeout (GC, a burst of requests): Redis has answered
      // long before the loop gets to read it.
      const until = Date.now() + 300;
      while (Date.now() < until) {
        /* busy */
      }
      await expect(pending).resolves.toMatchObject({ allowed: true, windows: [{ used: 2 }] });
    } finally {
      await s.close();
    }
  });

  it('incrementFields adds (floats too) and sets the TTL once, at creation', async () => {
    await store.incrementFields('usage', { requests: 1, cost_usd: 0.1 }, 5_000);
    const ttl1 = await admin.pttl(`${prefix}{usage}`);
    expect(ttl1).toBeGreaterThan(0);
    expect(ttl1).toBeLessThanOrEqual(5_000);
    await new Promise((r) => setTimeout(r, 30));
    await store.incrementFields('usage', { requests: 2, cost_usd: 0.2, tokens: 50 }, 60_000);
    const ttl2 = await admin.pttl(`${prefix}{usage}`);
    expect(ttl2).toBeLessThan(ttl1);
    const f = await store.getFields('usage');
    expect(f.requests).toBe(3);
    expect(f.tokens).toBe(50);
    expect(f.cost_usd).toBeCloseTo(0.3, 12);
    expect(await store.getFields('absent')).toEqual({});
    await store.incrementFields('noop', {}, 1_000);
    expect(await admin.exists(`${prefix}{noop}`)).toBe(0);
  });

  it('get, set with TTL, setIfAbsent', async () => {
    expect(await store.get('s')).toBeUndefined();
    expect(await store.setIfAbsent('s', 'first', 10_000)).toBe(true);
    expect(await store.setIfAbsent('s', 'second', 10_000)).toBe(false);
    expect(await store.get('s')).toBe('first');
    const ttl = await admin.pttl(`${prefix}{s}`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(10_000);
    await store.set('s', 'third', 50);
    expect(await store.get('s')).toBe('third');
    await waitFor('the value to expire', async () => (await store.get('s')) === undefined, 3_000, 20);
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => store.setIfAbsent('once', `v${i}`, 10_000)),
    );
    expect(results.filter(Boolean)).toHaveLength(1);
  });

  it('closes a client it opened, never one it was given', async () => {
    const own = new RedisStore({ url, keyPrefix: uniquePrefix('close') }, Redis);
    await own.waitReady(5_000);
    await own.close();
    await waitFor('the owned client to end', () => own.client.status === 'end', 2_000);
    const given = redisClient(url);
    const s = new RedisStore({ client: given, keyPrefix: uniquePrefix('close') });
    await s.ping();
    await s.close();
    expect(await given.ping()).toBe('PONG');
    given.disconnect();
  });
});

describe.skipIf(!url)('RedisStore on a Redis of its own', () => {
  let redis: OwnRedis;
  beforeAll(async () => {
    redis = await OwnRedis.start();
  });
  afterAll(async () => {
    await redis.stop();
  });

  it('reloads its scripts after a SCRIPT FLUSH (NOSCRIPT) and keeps counting', async () => {
    const s = new RedisStore({ url: redis.url, keyPrefix: 'p:' }, Redis);
    await s.waitReady(5_000);
    const admin = redisClient(redis.url);
    try {
      await s.consume('k', [minute(10)], 1);
      await s.consume('k', [minute(10)], 1);
      await admin.script('FLUSH');
      const r = await s.consume('k', [minute(10)], 1);
      expect(r.windows[0].used).toBe(3);
    } finally {
      admin.disconnect();
      await s.close();
    }
  });

  it('fails with StoreUnavailableError past commandTimeoutMs, and when Redis is gone', async () => {
    const s = new RedisStore({ url: redis.url, keyPrefix: 'p:', commandTimeoutMs: 100 }, Redis);
    await s.waitReady(5_000);
    const admin = redisClient(redis.url);
    try {
      await admin.call('CLIENT', 'PAUSE', '400', 'ALL');
      await expect(s.consume('t', [minute(10)], 1)).rejects.toBeInstanceOf(StoreUnavailableError);
      await redis.stop();
      await waitFor('the client to notice', () => !s.ready);
      const err = await s.consume('t', [minute(10)], 1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StoreUnavailableError);
      expect((err as Error).cause).toBeDefined();
      await expect(s.ping()).rejects.toBeInstanceOf(StoreUnavailableError);
    } finally {
      admin.disconnect();
      await s.close();
      await redis.start();
    }
  });
});
