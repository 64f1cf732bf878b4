import { Controller, Get, UseGuards } from '@nestjs/common';
import { ThrottlerGuard, ThrottlerModule } from '@nestjs/throttler';
import { Redis } from 'ioredis';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import {
  OpenAIHealthService,
  OpenAIModule,
  OpenAIThrottlerStorage,
  type OpenAIModuleOptions,
  type StorageFailurePolicy,
} from '../../lib/index.js';
import type { CapturingLogger } from '../support/capturing-logger.js';
import { fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { freePort, keysUnder, sharedRedisUrl, waitFor } from '../support/redis.js';
import { redisOutageSuite } from '../support/redis-outage.js';
import { PLATFORMS, auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';
import { startThrottlingApp, uniqueSampleUsers } from '../throttling/throttling-fixture.js';

// These suites run a redis-server of their own (killed and restarted); the shared one only tells
// whether redis-server is installed.
const available = sharedRedisUrl() !== '';

const storeLines = (logger: CapturingLogger, pattern: RegExp) =>
  logger.lines.filter((l) => l.context === 'OpenAIStore' && pattern.test(String(l.message)));
const bearer = (user: string) => ({ authorization: `Bearer ${user}-token` });

@Controller('plain')
@UseGuards(ThrottlerGuard)
class PlainController {
  @Get()
  get() {
    return { ok: true };
  }
}

describe.skipIf(!available).each(PLATFORMS)('Redis down and back on %s', (platform) => {
  const suite = redisOutageSuite();

  async function fixture(
    onFailure: StorageFailurePolicy,
    extra: OpenAIModuleOptions = {},
  ): Promise<FixtureHandle> {
    const h = await startThrottlingApp(platform, suite.fake.baseURL, {
      limits: { requests: [{ name: 'minute', limit: 4, ttl: 60_000 }] },
      storage: {
        type: 'redis',
        redis: { url: suite.redis.url, keyPrefix: `${onFailure}:` },
        onFailure,
        instances: 2,
      },
      ...extra,
    });
    suite.apps.push(h);
    return h;
  }
  const storeUp = async (h: FixtureHandle) => (await h.app.get(OpenAIHealthService).check()).up;

  it('fail-closed (sample in production): 503 storage_unavailable, /health 503, logged once, back to counting without a restart', async () => {
    const users = uniqueSampleUsers();
    const h: SampleAppHandle = await startSampleApp(platform, suite.fake, {
      NODE_ENV: 'production',
      REDIS_URL: suite.redis.url,
      RATE_LIMIT_RPM: '2',
      ...users.env,
    });
    suite.apps.push(h);
    await request(h.server).post('/chat').set(auth()).send(userMessage('before')).expect(200);
    await request(h.server).get('/health').expect(200);

    await suite.redis.stop();
    await waitFor(
      '/health to report the outage',
      async () => (await request(h.server).get('/health')).status === 503,
    );
    const health = await request(h.server).get('/health');
    expect(health.body).toMatchObject({ statusCode: 503 });
    suite.fake.reset();
    for (let i = 0; i < 6; i++) {
      const res = await request(h.server)
        .post('/chat')
        .set(auth(i % 2 ? 'alice-token' : 'bob-token'))
        .set('x-request-id', `down-${i}`)
        .send(userMessage('during'));
      expect(res.status).toBe(503);
      expect(res.body).toMatchObject({
        statusCode: 503,
        error: 'storage_unavailable',
        request_id: `down-${i}`,
      });
      expect(JSON.stringify(res.body)).not.toMatch(/ECONNREFUSED|127\.0\.0\.1/);
    }
    expect(suite.fake.requestsTo('/v1/chat/completions')).toHaveLength(0);
    expect(storeLines(h.logger, /unavailable/)).toHaveLength(1);
    expect(storeLines(h.logger, /unavailable/)[0].level).toBe('error');

    await suite.redis.start();
    await waitFor('/health to recover', async () => (await request(h.server).get('/health')).status === 200);
    // the restarted Redis is empty: a fresh window, counted there again
    const statuses = [];
    for (let i = 0; i < 3; i++)
      statuses.push((await request(h.server).post('/chat').set(auth()).send(userMessage('after'))).status);
    expect(statuses).toEqual([200, 200, 429]);
    const admin = new Redis(suite.redis.url);
    expect((await keysUnder(admin, 'openai:')).some((k) => k.includes(`{u:${users.alice}}:rl:req`))).toBe(
      true,
    );
    admin.disconnect();
    expect(storeLines(h.logger, /available again/)).toHaveLength(1);
    expect(storeLines(h.logger, /unavailable/)).toHaveLength(1);
  });

  it('fail-open: admits without counting while down, counts again once back', async () => {
    const h = await fixture('fail-open');
    expect((await request(h.server).get('/ping').set(bearer('alice'))).status).toBe(200);
    await suite.redis.stop();
    await waitFor('the store to notice', async () => !(await storeUp(h)));
    for (let i = 0; i < 8; i++) {
      const res = await request(h.server).get('/ping').set(bearer('alice'));
      expect(res.status).toBe(200);
      expect(res.headers['x-ratelimit-limit']).toBeUndefined();
    }
    expect(storeLines(h.logger, /unavailable, policy "fail-open"/)).toHaveLength(1);
    await suite.redis.start();
    await waitFor('the store to recover', () => storeUp(h));
    const statuses = [];
    for (let i = 0; i < 5; i++)
      statuses.push((await request(h.server).get('/ping').set(bearer('alice'))).status);
    expect(statuses).toEqual([200, 200, 200, 200, 429]);
  });

  it('memory: per-instance limits divided by `instances` while down, Redis again once back', async () => {
    const h = await fixture('memory');
    await suite.redis.stop();
    await waitFor('the store to notice', async () => !(await storeUp(h)));
    const down = [];
    for (let i = 0; i < 4; i++) down.push((await request(h.server).get('/ping').set(bearer('bob'))).status);
    // 4 a minute over 2 instances: 2 on this one
    expect(down).toEqual([200, 200, 429, 429]);
    const refused = await request(h.server).get('/ping').set(bearer('bob'));
    expect(refused.body.error).toBe('rate_limit_exceeded');
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await request(h.server).get('/ping').set(bearer('carol'))).status).toBe(200);
    expect(storeLines(h.logger, /unavailable, policy "memory"/)).toHaveLength(1);

    await suite.redis.start();
    await waitFor('the store to recover', () => storeUp(h));
    const back = [];
    for (let i = 0; i < 5; i++) back.push((await request(h.server).get('/ping').set(bearer('bob'))).status);
    expect(back).toEqual([200, 200, 200, 200, 429]);
    expect(storeLines(h.logger, /available again/)).toHaveLength(1);
  });

  it('the plain ThrottlerGuard over OpenAIThrottlerStorage answers 503 under fail-closed', async () => {
    const h = await startFixtureApp(
      platform,
      {},
      {
        openai: OpenAIModule.forRoot({
          ...fixtureOptions(suite.fake.baseURL, 'sk-test', {
            storage: {
              type: 'redis',
              redis: { url: suite.redis.url, keyPrefix: 'plain:' },
              onFailure: 'fail-closed',
            },
          }),
          isGlobal: true,
        }),
        imports: [
          ThrottlerModule.forRootAsync({
            inject: [OpenAIThrottlerStorage],
            useFactory: (storage: OpenAIThrottlerStorage) => ({
              throttlers: [{ limit: 2, ttl: 60_000 }],
              storage,
            }),
          }),
        ],
        controllers: [PlainController],
      },
    );
    suite.apps.push(h);
    expect((await request(h.server).get('/plain')).status).toBe(200);
    await suite.redis.stop();
    const res = await request(h.server).get('/plain');
    expect(res.status).toBe(503);
    expect(res.body.error).toBe('storage_unavailable');
  });

  it('boot with an unreachable Redis fails at startup, naming the fix', async () => {
    const port = await freePort();
    const err = (await startThrottlingApp(platform, suite.fake.baseURL, {
      storage: { type: 'redis', redis: { url: `redis://127.0.0.1:${port}` }, connectTimeoutMs: 300 },
    }).then(
      (h) => (suite.apps.push(h), undefined),
      (e: unknown) => e,
    )) as Error;
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toContain(`redis://127.0.0.1:${port}`);
    expect(err.message).toMatch(
      /Fix: start Redis, correct storage\.redis\.url, or use storage\.type 'memory'/,
    );
  });
});
