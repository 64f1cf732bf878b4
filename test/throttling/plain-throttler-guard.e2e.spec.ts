import { Controller, Get, UseGuards } from '@nestjs/common';
import { ThrottlerGuard, ThrottlerModule } from '@nestjs/throttler';
import { Redis } from 'ioredis';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenAIModule, OpenAIThrottlerStorage, type OpenAIModuleOptions } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { keysUnder, sharedRedisUrl, uniquePrefix } from '../support/redis.js';
import { PLATFORMS } from '../support/sample-app.js';

const redisUrl = sharedRedisUrl();

@Controller('plain')
@UseGuards(ThrottlerGuard)
class PlainController {
  @Get()
  get() {
    return { ok: true };
  }

  @Get('other')
  other() {
    return { ok: true };
  }
}

/** An app that keeps @nestjs/throttler's own guard, with the library's store under it. */
function startPlainApp(
  platform: (typeof PLATFORMS)[number],
  fake: FakeOpenAIServer,
  options: OpenAIModuleOptions,
): Promise<FixtureHandle> {
  return startFixtureApp(
    platform,
    {},
    {
      openai: OpenAIModule.forRoot({
        ...fixtureOptions(fake.baseURL, 'sk-test-plain', options),
        isGlobal: true,
      }),
      imports: [
        ThrottlerModule.forRootAsync({
          inject: [OpenAIThrottlerStorage],
          useFactory: (storage: OpenAIThrottlerStorage) => ({
            throttlers: [{ limit: 3, ttl: 60_000 }],
            storage,
          }),
        }),
      ],
      controllers: [PlainController],
    },
  );
}

describe.each(PLATFORMS)('plain ThrottlerGuard over OpenAIThrottlerStorage on %s', (platform) => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await fake.close();
  });

  /** Five requests to /plain: status, remaining, retry-after, statusCode of the body. */
  async function hitPlain(h: FixtureHandle) {
    const got = [];
    for (let i = 0; i < 5; i++) {
      const res = await request(h.server).get('/plain');
      got.push([
        res.status,
        res.headers['x-ratelimit-remaining'],
        res.headers['retry-after'] !== undefined,
        res.body.statusCode,
      ]);
    }
    return got;
  }
  const LIMITED = [
    [200, '2', false, undefined],
    [200, '1', false, undefined],
    [200, '0', false, undefined],
    [429, undefined, true, 429],
    [429, undefined, true, 429],
  ];

  async function expectLimited(h: FixtureHandle) {
    expect(await hitPlain(h)).toEqual(LIMITED);
    expect((await request(h.server).get('/plain').set('x-forwarded-for', '203.0.113.1')).status).toBe(429);
    // another route has its own counter, as with the throttler's own storage
    const other = await request(h.server).get('/plain/other');
    expect(other.status).toBe(200);
    expect(other.headers['x-ratelimit-limit']).toBe('3');
    expect(other.headers['x-ratelimit-remaining']).toBe('2');
  }

  it('in memory: limits correctly', async () => {
    const h = await startPlainApp(platform, fake, {});
    try {
      await expectLimited(h);
      expect.hasAssertions();
    } finally {
      await h.close();
    }
  });

  it.skipIf(!redisUrl)('on Redis: limits correctly, with the counts in Redis under the prefix', async () => {
    const prefix = uniquePrefix('plain');
    const h = await startPlainApp(platform, fake, {
      storage: { type: 'redis', redis: { url: redisUrl, keyPrefix: prefix } },
    });
    const admin = new Redis(redisUrl);
    try {
      await expectLimited(h);
      // each key's sliding window: a hash (`:sw`, with the count `n`) and its log (`:sl`)
      const keys = await keysUnder(admin, prefix);
      expect(keys).toHaveLength(4);
      for (const k of keys)
        expect(k).toMatch(
          new RegExp(
            `^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\{thr:[0-9a-f]{64}\\}:default:s[wl]$`,
          ),
        );
      const counts = await Promise.all(keys.filter((k) => k.endsWith(':sw')).map((k) => admin.hget(k, 'n')));
      expect(counts.map(Number).sort((a, b) => a - b)).toEqual([1, 3]);
    } finally {
      admin.disconnect();
      await h.close();
    }
  });
});
