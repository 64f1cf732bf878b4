import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import type { FixtureHandle } from '../support/fixture-app.js';
import { PLATFORMS, auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';
import {
  DoubleGuardedController,
  LimitedController,
  OverrideController,
  SkipBurstController,
  requestsUsed,
  startThrottlingApp,
  uniqueSampleUsers,
} from './throttling-fixture.js';

const MINUTE = { name: 'minute', limit: 5, ttl: 60_000 };
const BURST = { name: 'burst', limit: 3, ttl: 10_000 };
const PAID = { name: 'minute', limit: 10, ttl: 60_000 };

const bearer = (user: string) => ({ authorization: `Bearer ${user}-token` });
const rl = (res: request.Response) => ({
  limit: res.headers['x-ratelimit-limit'],
  remaining: res.headers['x-ratelimit-remaining'],
  reset: res.headers['x-ratelimit-reset'],
});

describe.each(PLATFORMS)('rate-limit headers and route overrides on %s', (platform) => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await fake.close();
  });

  describe('two windows (5 a minute, 3 per 10 s), a paid tier', () => {
    let h: FixtureHandle;
    beforeAll(async () => {
      h = await startThrottlingApp(
        platform,
        fake.baseURL,
        {
          // the longer window first: the headers must report the tightest, not the first
          limits: {
            requests: [MINUTE, BURST],
            tiers: (user) => (user === 'carol' ? { requests: [PAID] } : undefined),
          },
        },
        { controllers: [LimitedController, OverrideController, SkipBurstController] },
      );
    });
    afterAll(async () => {
      await h.close();
    });

    it('200s carry limit, decreasing remaining and reset of the tightest window; the 429 carries retry-after', async () => {
      const seen = [];
      for (let i = 0; i < 3; i++) {
        const res = await request(h.server).get('/ping').set(bearer('alice'));
        expect(res.status).toBe(200);
        seen.push(rl(res));
      }
      expect(seen.map((s) => [s.limit, s.remaining])).toEqual([
        ['3', '2'],
        ['3', '1'],
        ['3', '0'],
      ]);
      for (const s of seen) {
        expect(Number(s.reset)).toBeGreaterThanOrEqual(1);
        expect(Number(s.reset)).toBeLessThanOrEqual(10);
      }
      const refused = await request(h.server)
        .get('/ping')
        .set(bearer('alice'))
        .set('x-request-id', 'refused-1');
      expect(refused.status).toBe(429);
      expect(rl(refused)).toMatchObject({ limit: '3', remaining: '0' });
      expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(Number(refused.headers['retry-after'])).toBeLessThanOrEqual(10);
      expect(refused.body).toMatchObject({
        statusCode: 429,
        error: 'rate_limit_exceeded',
        limit: 'burst',
        request_id: 'refused-1',
      });
      expect(refused.body.message).toMatch(/"burst"/);
      // the refused request counted against no window
      expect(await requestsUsed(h.app, 'user:alice', [MINUTE, BURST])).toEqual([3, 3]);
    });

    it('a chat call through the guard carries the headers too', async () => {
      const res = await request(h.server).post('/chat').set(bearer('bob')).send(userMessage('hi'));
      expect(res.status).toBe(200);
      expect(res.body.content).toBe('Echo: hi');
      expect(rl(res)).toMatchObject({ limit: '3', remaining: '2' });
    });

    it('@Throttle({ minute: { limit: 2, ttl: 60000 } }) on a route overrides the window', async () => {
      const a = await request(h.server).get('/strict').set(bearer('dave'));
      const b = await request(h.server).get('/strict').set(bearer('dave'));
      const c = await request(h.server).get('/strict').set(bearer('dave'));
      expect([a.status, b.status, c.status]).toEqual([200, 200, 429]);
      expect([rl(a), rl(b)].map((r) => [r.limit, r.remaining])).toEqual([
        ['2', '1'],
        ['2', '0'],
      ]);
      expect(c.body).toMatchObject({ error: 'rate_limit_exceeded', limit: 'minute' });
    });

    it('@SkipThrottle() skips every window: no count, no headers', async () => {
      for (let i = 0; i < 6; i++) {
        const res = await request(h.server).get('/free').set(bearer('erin'));
        expect(res.status).toBe(200);
        expect(res.headers['x-ratelimit-limit']).toBeUndefined();
      }
      expect(await requestsUsed(h.app, 'user:erin', [MINUTE, BURST])).toEqual([0, 0]);
    });

    it('@SkipThrottle({ burst: true }) skips only that window', async () => {
      const res = await request(h.server).get('/no-burst').set(bearer('frank'));
      expect(res.status).toBe(200);
      expect(rl(res)).toMatchObject({ limit: '5', remaining: '4' });
      expect(await requestsUsed(h.app, 'user:frank', [MINUTE, BURST])).toEqual([1, 0]);
    });

    it('a tiers function gives a paid user its own, higher limit', async () => {
      const statuses: number[] = [];
      let first: ReturnType<typeof rl> | undefined;
      for (let i = 0; i < 11; i++) {
        const res = await request(h.server).get('/ping').set(bearer('carol'));
        statuses.push(res.status);
        first ??= rl(res);
      }
      expect(first).toMatchObject({ limit: '10', remaining: '9' });
      expect(statuses.filter((s) => s === 200)).toHaveLength(10);
      expect(statuses[10]).toBe(429);
      // a free user next to it keeps the default limits
      const free = await request(h.server).get('/ping').set(bearer('grace'));
      expect(rl(free)).toMatchObject({ limit: '3', remaining: '2' });
    });
  });

  describe('an override with a shorter window', () => {
    let h: FixtureHandle;
    beforeAll(async () => {
      h = await startThrottlingApp(
        platform,
        fake.baseURL,
        { limits: { requests: [{ name: 'minute', limit: 3, ttl: 60_000 }] } },
        { controllers: [LimitedController, OverrideController] },
      );
    });
    afterAll(async () => {
      await h.close();
    });

    it("does not reset or shorten the user's window on other routes", async () => {
      for (let i = 0; i < 3; i++)
        expect((await request(h.server).get('/ping').set(bearer('heidi'))).status).toBe(200);
      expect((await request(h.server).get('/ping').set(bearer('heidi'))).status).toBe(429);
      // @Throttle({ minute: { limit: 100, ttl: 1_000 } }) on /short-window
      expect((await request(h.server).get('/short-window').set(bearer('heidi'))).status).toBe(200);
      await new Promise((r) => setTimeout(r, 1_100));
      expect((await request(h.server).get('/short-window').set(bearer('heidi'))).status).toBe(200);
      // the minute window of /ping is still the one that started with the first request
      const res = await request(h.server).get('/ping').set(bearer('heidi'));
      expect(res.status).toBe(429);
      expect(await requestsUsed(h.app, 'user:heidi', [{ name: 'minute', limit: 3, ttl: 60_000 }])).toEqual([
        3,
      ]);
    });
  });

  describe('guard both global (APP_GUARD) and on the route', () => {
    let h: FixtureHandle;
    beforeAll(async () => {
      h = await startThrottlingApp(
        platform,
        fake.baseURL,
        { limits: { requests: [MINUTE] } },
        { globalGuard: true, controllers: [DoubleGuardedController, LimitedController] },
      );
    });
    afterAll(async () => {
      await h.close();
    });

    it('counts a request once', async () => {
      const a = await request(h.server).get('/double').set(bearer('alice'));
      const b = await request(h.server).get('/double').set(bearer('alice'));
      expect([a.status, b.status]).toEqual([200, 200]);
      expect([rl(a).remaining, rl(b).remaining]).toEqual(['4', '3']);
      // also on a controller that has the guard itself
      const c = await request(h.server).get('/ping').set(bearer('alice'));
      expect(rl(c).remaining).toBe('2');
      expect(await requestsUsed(h.app, 'user:alice', [MINUTE])).toEqual([3]);
    });
  });

  describe('sample app', () => {
    let h: SampleAppHandle;
    beforeAll(async () => {
      h = await startSampleApp(platform, fake, { RATE_LIMIT_RPM: '4', ...uniqueSampleUsers().env });
    });
    afterAll(async () => {
      await h.close();
    });

    it('POST /chat and POST /chat/stream both carry the rate-limit headers', async () => {
      const chat = await request(h.server).post('/chat').set(auth()).send(userMessage('hi'));
      expect(chat.status).toBe(200);
      expect(rl(chat)).toMatchObject({ limit: '4', remaining: '3' });
      const stream = await request(h.server)
        .post('/chat/stream')
        .set(auth())
        .send(userMessage('hi'))
        .buffer(true)
        .parse((res, cb) => {
          let data = '';
          res.on('data', (c: Buffer) => (data += c.toString()));
          res.on('end', () => cb(null, data));
        });
      expect(stream.status).toBe(200);
      expect(stream.body).toContain('data: [DONE]');
      expect(rl(stream)).toMatchObject({ limit: '4', remaining: '2' });
      expect(Number(stream.headers['x-ratelimit-reset'])).toBeGreaterThan(0);
    });
  });
});
