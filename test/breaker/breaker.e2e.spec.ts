import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OpenAIHealthService, OpenAIMetricsService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { sharedRedisUrl, uniquePrefix, waitFor } from '../support/redis.js';

const CHAT = '/v1/chat/completions';
const PRIMARY = 'gpt-4o-2024-08-06';
const FB = 'gpt-4o-mini-2024-07-18';
const COOLDOWN_MS = 600;
const body = { messages: [{ role: 'user', content: 'breaker' }] };
const redisUrl = sharedRedisUrl();

/** `openai_breaker_state{model}` of one instance. */
async function gauge(h: FixtureHandle, model: string): Promise<number | undefined> {
  const m = await h.app.get(OpenAIMetricsService).registry.getSingleMetric('openai_breaker_state')?.get();
  return m?.values.find((v) => v.labels.model === model)?.value;
}

/** The breaker of `model` as one instance's view has it (its /health). */
const breakerOf = async (h: FixtureHandle, model: string) =>
  (await h.app.get(OpenAIHealthService).check()).breakers[model]?.state;

const transitions = (hs: FixtureHandle[], model: string) =>
  hs.flatMap((h) => h.logger.records('circuit breaker')).filter((l) => l.model === model);

describe.skipIf(!redisUrl)('circuit breaker across two instances on one Redis', () => {
  let fake: FakeOpenAIServer;
  let a: FixtureHandle;
  let b: FixtureHandle;
  const primaryCalls = () => fake.requestsTo(CHAT, PRIMARY).length;

  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    const options = fixtureOptions(fake.baseURL, TEST_API_KEY, {
      models: { default: PRIMARY, fallbacks: [FB] },
      retry: { maxRetries: 0 },
      breaker: { failures: 3, cooldownMs: COOLDOWN_MS },
      storage: { type: 'redis', redis: { url: redisUrl, keyPrefix: uniquePrefix('breaker') } },
    });
    a = await startFixtureApp('express', options);
    b = await startFixtureApp('express', options);
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('opens after N failures counted on both instances, skips the model everywhere, probes once, closes', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 500 });
    // Failures 1 and 2 (one on each instance) leave it closed: every call still tries the primary.
    for (const h of [a, b]) {
      const res = await request(h.server).post('/chat').send(body).expect(200);
      expect(res.body).toMatchObject({ model: FB, fallback_from: PRIMARY });
    }
    expect(primaryCalls()).toBe(2);
    expect(transitions([a, b], PRIMARY)).toHaveLength(0);
    // The third consecutive failure (on A) opens it: one line for the two instances (Nest's static
    // logger writes both apps' lines to the last app's logger, so the two are read together).
    await request(a.server).post('/chat').send(body).expect(200);
    expect(primaryCalls()).toBe(3);
    expect(transitions([a, b], PRIMARY)).toEqual([expect.objectContaining({ state: 'open' })]);
    expect(await gauge(a, PRIMARY)).toBe(1);

    // B never saw a failure trip it, yet skips the primary: straight to the fallback, no upstream attempt.
    // A's transition reaches B's view through the store's pub/sub (B reads no store per call): wait for it.
    await waitFor(
      'B to learn that the breaker opened',
      async () => (await breakerOf(b, PRIMARY)) === 'open',
      2_000,
      10,
    );
    const skipped = await request(b.server).post('/chat').send(body).expect(200);
    expect(skipped.body).toMatchObject({ model: FB, fallback_from: PRIMARY, attempts: 1 });
    expect(primaryCalls()).toBe(3);
    expect(await gauge(b, PRIMARY)).toBe(1);
    expect((await b.app.get(OpenAIHealthService).check()).breakers[PRIMARY]).toMatchObject({ state: 'open' });

    // After the cool-down the primary is healthy but slow: of two concurrent calls on the two
    // instances exactly one is the probe; the other is still sent to the fallback.
    fake.clearFaults();
    fake.fault({ path: CHAT, model: PRIMARY, delayMs: 300 });
    await new Promise((r) => setTimeout(r, COOLDOWN_MS + 50));
    const [ra, rb] = await Promise.all([
      request(a.server).post('/chat').send(body),
      request(b.server).post('/chat').send(body),
    ]);
    expect([ra.status, rb.status]).toEqual([200, 200]);
    expect([ra.body.model, rb.body.model]).toEqual(expect.arrayContaining([PRIMARY, FB]));
    expect(primaryCalls()).toBe(4);
    // Probe succeeded: closed for everyone.
    const after = await request(b.server).post('/chat').send(body).expect(200);
    expect(after.body).toMatchObject({ model: PRIMARY, fallback_from: null });
    expect(await gauge(b, PRIMARY)).toBe(0);
    const states = transitions([a, b], PRIMARY).map((l) => l.state);
    expect(states).toEqual(['open', 'half-open', 'closed']);
  });

  it('a failed probe reopens it; every candidate open: 503 upstream_unavailable with retry-after, no upstream call', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 503 });
    fake.fault({ path: CHAT, model: FB, status: 500 });
    for (let i = 0; i < 3; i++)
      await request(i % 2 ? a.server : b.server)
        .post('/chat')
        .send(body)
        .expect(502);
    const sent = fake.requestsTo(CHAT).length;
    expect(sent).toBe(6);
    // B made both transitions; A learns them through the store's pub/sub.
    await waitFor(
      'A to learn that both breakers opened',
      async () => (await breakerOf(a, PRIMARY)) === 'open' && (await breakerOf(a, FB)) === 'open',
      2_000,
      10,
    );

    const res = await request(a.server).post('/chat').set('x-request-id', 'all-open').send(body);
    expect(res.status).toBe(503);
    expect(res.body).toMatchObject({ error: 'upstream_unavailable', request_id: 'all-open' });
    expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(res.body.retry_after).toBe(Number(res.headers['retry-after']));
    expect(fake.requestsTo(CHAT)).toHaveLength(sent);

    // Cool-down over, still failing: each model's probe fails and reopens it.
    await new Promise((r) => setTimeout(r, COOLDOWN_MS + 50));
    await request(b.server).post('/chat').send(body).expect(502);
    expect(fake.requestsTo(CHAT)).toHaveLength(sent + 2);
    await request(a.server).post('/chat').send(body).expect(503);
    expect(fake.requestsTo(CHAT)).toHaveLength(sent + 2);
    const reopened = transitions([a, b], PRIMARY).filter((l) => l.state === 'open');
    expect(reopened.at(-1)).toMatchObject({ reason: expect.stringContaining('probe failed') });

    // Recovery: both answer again after the cool-down.
    fake.clearFaults();
    await waitFor(
      'the breakers to let a probe through and close',
      async () => (await request(a.server).post('/chat').send(body)).status === 200,
      5_000,
      100,
    );
  });
});
