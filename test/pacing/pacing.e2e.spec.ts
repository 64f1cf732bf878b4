import { performance } from 'node:perf_hooks';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OpenAIMetricsService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { sharedRedisUrl, uniquePrefix, waitFor } from '../support/redis.js';

const CHAT = '/v1/chat/completions';
const PRIMARY = 'gpt-4o-2024-08-06';
const FB = 'gpt-4o-mini-2024-07-18';
const body = { messages: [{ role: 'user', content: 'pace me' }] };
const redisUrl = sharedRedisUrl();

async function gauge(h: FixtureHandle, name: string, model: string): Promise<number | undefined> {
  const m = await h.app.get(OpenAIMetricsService).registry.getSingleMetric(name)?.get();
  return m?.values.find((v) => v.labels.model === model)?.value;
}

describe.skipIf(!redisUrl)('pacing by x-ratelimit-* across two instances on one Redis (refuse)', () => {
  let fake: FakeOpenAIServer;
  let a: FixtureHandle;
  let b: FixtureHandle;
  beforeAll(async () => {
    // The upstream's window: 3 requests a minute; its headers say how many are left.
    fake = await FakeOpenAIServer.start({ rateLimits: { requestsPerMinute: 3 } });
    const options = fixtureOptions(fake.baseURL, TEST_API_KEY, {
      models: { default: PRIMARY },
      pacing: { mode: 'refuse' },
      storage: { type: 'redis', redis: { url: redisUrl, keyPrefix: uniquePrefix('pacing') } },
    });
    a = await startFixtureApp('express', options);
    b = await startFixtureApp('fastify', options);
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await fake?.close();
  });

  it('once the organization has no requests left, a call on the other instance is refused before it is sent', async () => {
    await request(a.server).post('/chat').send(body).expect(200);
    expect(await gauge(a, 'openai_upstream_remaining_requests', PRIMARY)).toBe(2);
    expect(await gauge(a, 'openai_upstream_remaining_tokens', PRIMARY)).toBeGreaterThan(0);
    await request(a.server).post('/chat').send(body).expect(200);
    await request(b.server).post('/chat').send(body).expect(200); // remaining: 0
    expect(await gauge(b, 'openai_upstream_remaining_requests', PRIMARY)).toBe(0);
    // B's reply (nothing left) reaches A's view through the store's pub/sub (A reads no store per call).
    await waitFor(
      'A to learn that no request is left',
      async () => (await gauge(a, 'openai_upstream_remaining_requests', PRIMARY)) === 0,
      2_000,
      10,
    );

    const res = await request(a.server).post('/chat').set('x-request-id', 'paced-1').send(body);
    expect(res.status).toBe(429);
    expect(res.body).toMatchObject({ error: 'upstream_rate_limited', request_id: 'paced-1' });
    // Until the upstream's window resets (a minute from its first request).
    const retryAfter = Number(res.headers['retry-after']);
    expect(retryAfter).toBeGreaterThan(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(fake.requestsTo(CHAT)).toHaveLength(3);
  });
});

describe('pacing in queue mode (memory store)', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: { default: PRIMARY, fallbacks: [FB] },
        pacing: { mode: 'queue', minRemainingRequests: 1 },
        timeouts: { attemptMs: 2_000, deadlineMs: 4_000 },
      }),
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('waits for the reported reset, then sends', async () => {
    fake.fault({
      path: CHAT,
      times: 1,
      headers: { 'x-ratelimit-remaining-requests': '1', 'x-ratelimit-reset-requests': '500ms' },
    });
    await request(h.server).post('/chat').send(body).expect(200);
    const repliedAt = performance.now();
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(200);
    expect(res.body.model).toBe(PRIMARY);
    const [, second] = fake.requestsTo(CHAT);
    // Sent only after the reset (400 ms: margin for the clocks, no upper bound asserted).
    expect(second.at - repliedAt).toBeGreaterThanOrEqual(400);
  });

  it('a reset past the deadline: the fallback answers; the fallback spent too: 429 at once, nothing sent', async () => {
    const spent = { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '6m0s' };
    fake.fault({ path: CHAT, model: PRIMARY, times: 1, headers: spent });
    await request(h.server).post('/chat').send(body).expect(200);
    const fb = await request(h.server).post('/chat').send(body).expect(200);
    expect(fb.body).toMatchObject({ model: FB, fallback_from: PRIMARY });
    expect(fake.requestsTo(CHAT).map((r) => r.model)).toEqual([PRIMARY, FB]);

    fake.fault({
      path: CHAT,
      model: FB,
      times: 1,
      headers: { ...spent, 'x-ratelimit-reset-requests': '5m0s' },
    });
    await request(h.server).post('/chat').send(body).expect(200); // the fallback answers, and is now spent
    fake.reset();
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(429);
    expect(res.body.error).toBe('upstream_rate_limited');
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(200); // the sooner reset: ~5 min
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });
});
