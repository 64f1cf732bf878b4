import { randomBytes } from 'node:crypto';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { keysUnder, redisClient, sharedRedisUrl } from '../support/redis.js';
import { PLATFORMS, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';

const redisUrl = sharedRedisUrl();

// The sample keeps its Redis keys under the default prefix: each run uses user names of its own.
describe.skipIf(!redisUrl).each(PLATFORMS)(
  'usage shared by two sample instances on one Redis (%s)',
  (platform) => {
    const tag = randomBytes(4).toString('hex');
    const user = `usage-${platform}-${tag}`;
    const other = `other-${platform}-${tag}`;
    let fake: FakeOpenAIServer;
    let a: SampleAppHandle;
    let b: SampleAppHandle;
    beforeAll(async () => {
      fake = await FakeOpenAIServer.start({ cachedTokens: 2 });
      const env = {
        REDIS_URL: redisUrl,
        SAMPLE_USERS: `${user}:tok-${tag},${other}:tok2-${tag}`,
        RATE_LIMIT_RPM: '1000',
        MODERATION: 'off',
      };
      a = await startSampleApp(platform, fake, env);
      b = await startSampleApp(platform, fake, env);
    });
    afterAll(async () => {
      await a?.close();
      await b?.close();
      await fake?.close();
    });

    it('GET /usage on either instance sees the traffic of both', async () => {
      const auth = { authorization: `Bearer tok-${tag}` };
      const bodies = [];
      for (const [i, app] of [a, a, a, b, b].entries()) {
        const res = await request(app.server)
          .post('/chat')
          .set(auth)
          .send(userMessage(`message number ${i} ${'x '.repeat(i)}`));
        expect(res.status).toBe(200);
        bodies.push(res.body);
      }
      await request(b.server)
        .post('/chat')
        .set({ authorization: `Bearer tok2-${tag}` })
        .send(userMessage('someone else'))
        .expect(200);
      // the ledger is written off the request path: wait for both instances' writes
      await a.app.get(UsageService).flush();
      await b.app.get(UsageService).flush();

      const prompt = bodies.reduce((n, r) => n + r.usage.prompt_tokens, 0);
      const completion = bodies.reduce((n, r) => n + r.usage.completion_tokens, 0);
      const cost = bodies.reduce((n, r) => n + r.cost_usd, 0);
      for (const app of [a, b]) {
        const res = await request(app.server).get('/usage').set(auth);
        expect(res.status).toBe(200);
        expect(res.body).toMatchObject({
          user,
          requests: 5,
          prompt_tokens: prompt,
          completion_tokens: completion,
          cached_tokens: 10,
          unpriced_requests: 0,
        });
        expect(res.body.cost_usd).toBeCloseTo(cost, 9);
      }
      expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(6);
      // and it really is Redis that holds it
      const client = redisClient(redisUrl);
      try {
        expect(await keysUnder(client, `openai:{u:${user}}:usage:`)).toHaveLength(2);
      } finally {
        client.disconnect();
      }
    });
  },
);
