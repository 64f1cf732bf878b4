import type { Redis } from 'ioredis';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryStore } from '../../lib/storage/memory.store.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { RedisCommandLog, redisClient, sharedRedisUrl, uniquePrefix } from '../support/redis.js';

const CHAT = '/v1/chat/completions';
const PRIMARY = 'gpt-4o-2024-08-06';
const FB = 'gpt-4o-mini-2024-07-18';
const body = { messages: [{ role: 'user', content: 'cost' }] };
const redisUrl = sharedRedisUrl();
const CALLS = 40;

describe.skipIf(!redisUrl)('breaker and pacing on Redis: no store round trip per call (MONITOR)', () => {
  let fake: FakeOpenAIServer;
  let admin: Redis;
  let a: FixtureHandle;
  let b: FixtureHandle;
  const prefix = uniquePrefix('shared-cost');

  beforeAll(async () => {
    // The fake's replies carry x-ratelimit-* headers with plenty left: nothing is paced.
    fake = await FakeOpenAIServer.start();
    admin = redisClient(redisUrl);
    const options = fixtureOptions(fake.baseURL, TEST_API_KEY, {
      models: { default: PRIMARY, fallbacks: [FB] },
      // The staging and production defaults; no periodic re-read during the test (one every 5 s by default).
      breaker: { failures: 5, syncIntervalMs: 60_000 },
      pacing: { mode: 'queue', syncIntervalMs: 60_000 },
      storage: { type: 'redis', redis: { url: redisUrl, keyPrefix: prefix } },
    });
    a = await startFixtureApp('express', options);
    b = await startFixtureApp('fastify', options);
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await fake?.close();
    admin?.disconnect();
  });

  it(`${CALLS} calls on two instances, breaker closed, nothing paced: no breaker or pacing command`, async () => {
    // First calls: each instance meets the model.
    await request(a.server).post('/chat').send(body).expect(200);
    await request(b.server).post('/chat').send(body).expect(200);
    const log = await RedisCommandLog.start(admin);
    try {
      await log.flush(admin);
      for (let i = 0; i < CALLS; i++) {
        const res = await request(i % 2 ? b.server : a.server)
          .post('/chat')
          .send(body)
          .expect(200);
        expect(res.body.model).toBe(PRIMARY);
      }
      const seen = await log.flush(admin);
      const ours = seen.filter((args) => args.some((x) => x.startsWith(prefix)));
      const shared = ours.filter((args) =>
        args.some((x) => x.startsWith(`${prefix}{breaker:`) || x.startsWith(`${prefix}{pace:`)),
      );
      console.info(
        `[breaker + pacing] Redis commands per call (${CALLS} calls, 2 instances): ` +
          `breaker and pacing ${(shared.length / CALLS).toFixed(3)} ` +
          `(${[...new Set(shared.map((c) => c[0]))].join(', ') || 'none'}), ` +
          `all under the prefix ${(ours.length / CALLS).toFixed(3)}`,
      );
      expect(fake.requestsTo(CHAT).length).toBeGreaterThanOrEqual(CALLS);
      expect(shared).toEqual([]);
    } finally {
      log.stop();
    }
  });
});

describe('breaker and pacing on the memory store: no store operation per call', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  /** Breaker and pacing operations on the store (their keys start with `breaker:` and `pace:`). */
  const ops: string[] = [];
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    for (const name of ['breakerAdmit', 'breakerReport', 'get', 'set'] as const) {
      const original = MemoryStore.prototype[name] as (this: MemoryStore, ...a: unknown[]) => unknown;
      vi.spyOn(MemoryStore.prototype, name).mockImplementation(function (this: MemoryStore, ...a: unknown[]) {
        if (/^(breaker|pace):/.test(String(a[0]))) ops.push(`${name} ${String(a[0])}`);
        return original.apply(this, a) as never;
      });
    }
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: { default: PRIMARY, fallbacks: [FB] },
        breaker: { failures: 5, syncIntervalMs: 60_000 },
        pacing: { mode: 'queue', syncIntervalMs: 60_000 },
      }),
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it(`${CALLS} calls: the breaker reads its store once per sync interval, pacing never`, async () => {
    // The memory store has no pub/sub: the first call reads the breaker, which then holds for the interval.
    await request(h.server).post('/chat').send(body).expect(200);
    expect(ops.filter((o) => o.startsWith('breakerAdmit'))).toHaveLength(1);
    ops.length = 0;
    for (let i = 0; i < CALLS; i++) await request(h.server).post('/chat').send(body).expect(200);
    console.info(
      `[breaker + pacing] memory store operations per call (${CALLS} calls): ${ops.length / CALLS}`,
    );
    expect(ops).toEqual([]);
  });
});
