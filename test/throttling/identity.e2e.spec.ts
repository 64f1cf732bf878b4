import http from 'node:http';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import type { FixtureHandle } from '../support/fixture-app.js';
import { PLATFORMS, auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';
import { listen, requestsUsed, startThrottlingApp, uniqueSampleUsers } from './throttling-fixture.js';

const MINUTE = (limit: number) => [{ name: 'minute', limit, ttl: 60_000 }];

/** Headers a client might send hoping to be counted as someone else. */
const SPOOFS: Array<Record<string, string>> = [
  { 'x-forwarded-for': '203.0.113.7' },
  { 'x-real-ip': '198.51.100.23' },
  { 'x-user-id': 'bob' },
  { 'x-request-id': 'another-request-id' },
  { forwarded: 'for=192.0.2.60;proto=http' },
  { 'cf-connecting-ip': '192.0.2.1', 'true-client-ip': '192.0.2.2' },
  { 'x-forwarded-for': '10.0.0.1, 10.0.0.2', 'x-user': 'bob', cookie: 'user=bob' },
  { 'x-ratelimit-remaining': '100', 'x-client-id': 'bob' },
];

describe.each(PLATFORMS)('whose limit applies, on %s', (platform) => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await fake.close();
  });

  describe('sample app (bearer tokens)', () => {
    let h: SampleAppHandle;
    const users = uniqueSampleUsers();
    beforeAll(async () => {
      h = await startSampleApp(platform, fake, { RATE_LIMIT_RPM: '3', ...users.env });
    });
    afterAll(async () => {
      await h.close();
    });

    it('with a valid token for alice every request counts against alice, whatever else is sent', async () => {
      const statuses: number[] = [];
      const errors: unknown[] = [];
      for (const spoof of SPOOFS) {
        const res = await request(h.server)
          .post('/chat')
          .set(auth('alice-token'))
          .set(spoof)
          .send(userMessage('hi'));
        statuses.push(res.status);
        errors.push(res.body.error);
      }
      expect(statuses).toEqual([200, 200, 200, 429, 429, 429, 429, 429]);
      expect(errors.slice(3)).toEqual(Array(5).fill('rate_limit_exceeded'));
      expect(await requestsUsed(h.app, `user:${users.alice}`, MINUTE(3))).toEqual([3]);
      // nothing went to bob, nor to an IP
      expect(await requestsUsed(h.app, `user:${users.bob}`, MINUTE(3))).toEqual([0]);
      expect(await requestsUsed(h.app, 'ip:127.0.0.1', MINUTE(3))).toEqual([0]);
      expect(await requestsUsed(h.app, 'ip:::1', MINUTE(3))).toEqual([0]);
    });

    it("a second user is unaffected by the first one's exhaustion", async () => {
      const res = await request(h.server).post('/chat').set(auth('bob-token')).send(userMessage('hi'));
      expect(res.status).toBe(200);
      expect(res.headers['x-ratelimit-limit']).toBe('3');
      expect(res.headers['x-ratelimit-remaining']).toBe('2');
      const alice = await request(h.server)
        .post('/chat')
        .set(auth('alice-token'))
        .set('x-user-id', users.bob)
        .send(userMessage('hi'));
      expect(alice.status).toBe(429);
      expect(await requestsUsed(h.app, `user:${users.bob}`, MINUTE(3))).toEqual([1]);
    });

    it('an unknown token is refused before it is counted anywhere', async () => {
      const res = await request(h.server)
        .post('/chat')
        .set(auth('nobody-token'))
        .set('x-forwarded-for', '203.0.113.9')
        .send(userMessage('hi'));
      expect(res.status).toBe(401);
      expect(await requestsUsed(h.app, 'ip:127.0.0.1', MINUTE(3))).toEqual([0]);
    });
  });

  describe('fixture app with a public route (anonymous requests by IP)', () => {
    let h: FixtureHandle;
    let base: string;
    beforeAll(async () => {
      h = await startThrottlingApp(platform, fake.baseURL, { limits: { requests: MINUTE(2) } });
      base = await listen(h.app);
    });
    afterAll(async () => {
      await h.close();
    });

    function get(path: string, headers: Record<string, string> = {}, localAddress = '127.0.0.1') {
      return new Promise<{ status: number; headers: http.IncomingHttpHeaders }>((resolve, reject) => {
        http
          .get(`${base}${path}`, { headers, localAddress, agent: false }, (res) => {
            res.resume();
            res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers }));
          })
          .on('error', reject);
      });
    }

    it('counts anonymous requests against the client IP; forwarding headers change nothing', async () => {
      const statuses: number[] = [];
      for (const spoof of SPOOFS.slice(0, 5)) statuses.push((await get('/public', spoof)).status);
      expect(statuses).toEqual([200, 200, 429, 429, 429]);
      expect(await requestsUsed(h.app, 'ip:127.0.0.1', MINUTE(2))).toEqual([2]);
      for (const ip of ['203.0.113.7', '198.51.100.23', '192.0.2.60'])
        expect(await requestsUsed(h.app, `ip:${ip}`, MINUTE(2))).toEqual([0]);
    });

    it('a signed-in user on the same IP has a limit of its own', async () => {
      const res = await get('/public', { authorization: 'Bearer alice-token' });
      expect(res.status).toBe(200);
      expect(res.headers['x-ratelimit-remaining']).toBe('1');
    });

    it('another client IP has a limit of its own', async () => {
      // Linux routes all of 127.0.0.0/8 to the loopback interface: a second client address.
      const other = await get('/public', {}, '127.0.0.2');
      expect(other.status).toBe(200);
      expect(await requestsUsed(h.app, 'ip:127.0.0.2', MINUTE(2))).toEqual([1]);
      expect((await get('/public')).status).toBe(429);
    });
  });
});
