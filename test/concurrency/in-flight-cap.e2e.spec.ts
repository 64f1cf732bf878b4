import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OPENAI_STORE, type OpenAIModuleOptions } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { sharedRedisUrl, uniquePrefix, waitFor } from '../support/redis.js';

const CHAT = '/v1/chat/completions';
const body = { messages: [{ role: 'user', content: 'in flight' }] };
const redisUrl = sharedRedisUrl();

const chat = (h: FixtureHandle, user: string) =>
  request(h.server).post('/chat').set('x-user', user).send(body);

describe.skipIf(!redisUrl)('in-flight cap per user across instances on one Redis', () => {
  let fake: FakeOpenAIServer;
  let a: FixtureHandle;
  let b: FixtureHandle;
  const prefix = uniquePrefix('inflight');
  const options = (extra: OpenAIModuleOptions = {}) =>
    fixtureOptions(fake.baseURL, TEST_API_KEY, {
      identity: { resolve: (req: { headers: Record<string, string> }) => req.headers['x-user'] },
      storage: { type: 'redis', redis: { url: redisUrl, keyPrefix: prefix } },
      ...extra,
      limits: { maxInFlight: 2, ...extra.limits },
    });

  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    a = await startFixtureApp('express', options());
    b = await startFixtureApp('fastify', options());
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('a third call of one user while two are in flight (on the other instance) is 429; other users pass; slots free when calls end', async () => {
    fake.fault({ path: CHAT, delayMs: 600 });
    const first = [chat(a, 'alice'), chat(a, 'alice')].map((r) => r.then((x) => x));
    await waitFor('two calls upstream', () => fake.requestsTo(CHAT).length === 2);

    const third = await chat(b, 'alice').set('x-request-id', 'cap-1');
    expect(third.status).toBe(429);
    expect(third.body).toMatchObject({
      error: 'concurrency_limit_exceeded',
      request_id: 'cap-1',
      max_in_flight: 2,
    });
    expect(Number(third.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(fake.requestsTo(CHAT)).toHaveLength(2);
    const refusal = [...a.logger.records('request refused'), ...b.logger.records('request refused')].find(
      (l) => l.request_id === 'cap-1',
    );
    expect(refusal).toMatchObject({ reason: 'concurrency_limit_exceeded', status: 429 });

    // Another user has slots of their own.
    const bob = await chat(b, 'bob');
    expect(bob.status).toBe(200);

    expect((await Promise.all(first)).map((r) => r.status)).toEqual([200, 200]);
    fake.clearFaults();
    // Settled calls freed their slots: alice has two again, on either instance.
    const again = await Promise.all([chat(b, 'alice'), chat(a, 'alice')]);
    expect(again.map((r) => r.status)).toEqual([200, 200]);
  });

  it('failed and aborted calls free their slots', async () => {
    fake.fault({ path: CHAT, status: 400, times: 2 });
    expect((await Promise.all([chat(a, 'carol'), chat(b, 'carol')])).map((r) => r.status)).toEqual([
      400, 400,
    ]);
    fake.fault({ path: CHAT, hang: true, times: 2 });
    // Two requests whose clients give up: the calls are aborted, their slots freed.
    for (let i = 0; i < 2; i++) {
      await request(a.server)
        .post('/chat')
        .set('x-user', 'carol')
        .timeout(300)
        .send(body)
        .catch(() => undefined);
    }
    await waitFor('the aborted calls to free their slots', async () => {
      const r = await Promise.all([chat(a, 'carol'), chat(b, 'carol')]);
      return r.every((x) => x.status === 200);
    });
  });

  it('the slots of an instance that died expire after limits.inFlightTtlMs', async () => {
    const c = await startFixtureApp(
      'express',
      options({ limits: { inFlightTtlMs: 1_500 }, timeouts: { attemptMs: 3_000, deadlineMs: 3_000 } }),
    );
    try {
      fake.fault({ path: CHAT, hang: true, times: 2 });
      const hung = [chat(c, 'dave'), chat(c, 'dave')].map((r) =>
        r.then(
          (x) => x,
          () => undefined,
        ),
      );
      await waitFor('two calls upstream', () => fake.requestsTo(CHAT).length === 2);
      // "Kill" C: its Redis connection is gone, it will never free the slots it took.
      const primary = (c.app.get(OPENAI_STORE) as unknown as { primary: { client: { disconnect(): void } } })
        .primary;
      primary.client.disconnect();
      const refused = await chat(a, 'dave');
      expect(refused.status).toBe(429);
      await waitFor(
        'the dead instance slots to expire',
        async () => (await chat(a, 'dave')).status === 200,
        5_000,
        100,
      );
      void hung;
    } finally {
      fake.clearFaults();
      await c.close().catch(() => undefined);
    }
  });
});
