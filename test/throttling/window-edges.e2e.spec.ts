import { Controller, Get, UseGuards } from '@nestjs/common';
import { ThrottlerGuard, ThrottlerModule } from '@nestjs/throttler';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenAIModule, OpenAIThrottlerStorage, type OpenAIModuleOptions } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { sharedRedisUrl, uniquePrefix } from '../support/redis.js';
import { PLATFORMS } from '../support/sample-app.js';
import { startThrottlingApp, tokensUsed } from './throttling-fixture.js';

const redisUrl = sharedRedisUrl();

/**
 * Limits are exact at window edges: requests and tokens through the HTTP guard and the token hook, on
 * memory and on Redis shared by two instances, and `blockDuration` through the plain ThrottlerGuard.
 * The stores read a controlled clock (`storage.memory.now`, `storage.redis.now`), never sleeps.
 */

/** A controlled clock: on a second boundary, ahead of the real one (Redis expires keys by its own). */
function clock() {
  const t0 = Math.ceil(Date.now() / 1_000) * 1_000 + 600_000;
  const c = { now: t0, at: (ms: number) => (c.now = t0 + ms), read: () => c.now };
  return c;
}

const SECOND = { name: 'second', limit: 2, ttl: 1_000 };
const bearer = { authorization: 'Bearer alice-token' };

describe.each(PLATFORMS)('limits at window edges on %s', (platform) => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await fake.close();
  });

  /** 2 per second: hits at 0.90 s and 1.05 s pass; 1.10 s is a 429 until 1.90 s (alternating `apps`). */
  async function boundaryBurst(c: ReturnType<typeof clock>, apps: FixtureHandle[]) {
    const seen: Array<[number, number, string | undefined, string | undefined]> = [];
    let i = 0;
    for (const ms of [900, 1_050, 1_100, 1_899, 1_900, 1_949]) {
      c.at(ms);
      const res = await request(apps[i++ % apps.length].server)
        .get('/ping')
        .set(bearer);
      seen.push([ms, res.status, res.headers['x-ratelimit-remaining'], res.headers['retry-after']]);
    }
    expect(seen).toEqual([
      [900, 200, '1', undefined],
      [1_050, 200, '0', undefined],
      // a fixed window restarting at 1.00 s would admit this third hit within 0.2 s
      [1_100, 429, '0', '1'],
      [1_899, 429, '0', '1'],
      [1_900, 200, '0', undefined],
      [1_949, 429, '0', '1'],
    ]);
  }

  it('in memory: requests never pass twice the limit around a window boundary', async () => {
    const c = clock();
    const h = await startThrottlingApp(platform, fake.baseURL, {
      limits: { requests: [SECOND] },
      storage: { memory: { now: c.read } },
    });
    try {
      await boundaryBurst(c, [h]);
      expect.hasAssertions();
    } finally {
      await h.close();
    }
  });

  it.skipIf(!redisUrl)('on Redis, two instances: the same edge holds across both', async () => {
    const c = clock();
    const options: OpenAIModuleOptions = {
      limits: { requests: [SECOND] },
      storage: { type: 'redis', redis: { url: redisUrl, keyPrefix: uniquePrefix('edges'), now: c.read } },
    };
    const a = await startThrottlingApp(platform, fake.baseURL, options);
    const b = await startThrottlingApp(platform, fake.baseURL, options);
    try {
      await boundaryBurst(c, [a, b]);
      expect.hasAssertions();
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('tokens: what a call used is freed one window after it was counted, not at a clock-aligned edge', async () => {
    const c = clock();
    const h = await startThrottlingApp(platform, fake.baseURL, {
      limits: { tokens: [{ name: 'minute', limit: 100_000, ttl: 60_000 }] },
      storage: { memory: { now: c.read } },
    });
    try {
      c.at(59_000);
      const res = await request(h.server)
        .post('/chat')
        .set(bearer)
        .send({ messages: [{ role: 'user', content: 'hello there' }], max_tokens: 50 });
      expect(res.status).toBe(200);
      const used = res.body.usage.total_tokens as number;
      expect(used).toBeGreaterThan(0);
      // settled to the real usage (the reservation of prompt + max_tokens was given back)
      expect(await tokensUsed(h.app, 'alice')).toBe(used);
      // a minute window aligned on the clock would have dropped it at 60 s
      c.at(60_500);
      expect(await tokensUsed(h.app, 'alice')).toBe(used);
      c.at(118_999);
      expect(await tokensUsed(h.app, 'alice')).toBe(used);
      c.at(119_000);
      expect(await tokensUsed(h.app, 'alice')).toBe(0);
    } finally {
      await h.close();
    }
  });
});

@Controller('plain')
@UseGuards(ThrottlerGuard)
class PlainController {
  @Get()
  get() {
    return { ok: true };
  }
}

describe.each(PLATFORMS)(
  'plain ThrottlerGuard with blockDuration over OpenAIThrottlerStorage on %s',
  (platform) => {
    it('a refused key stays blocked for blockDuration (5 s), beyond its 1 s window', async () => {
      const c = clock();
      const h = await startFixtureApp(
        platform,
        {},
        {
          openai: OpenAIModule.forRoot({
            ...fixtureOptions('http://127.0.0.1:9', 'sk-test-block', {
              storage: { memory: { now: c.read } },
            }),
            isGlobal: true,
          }),
          imports: [
            ThrottlerModule.forRootAsync({
              inject: [OpenAIThrottlerStorage],
              useFactory: (storage: OpenAIThrottlerStorage) => ({
                throttlers: [{ limit: 2, ttl: 1_000, blockDuration: 5_000 }],
                storage,
              }),
            }),
          ],
          controllers: [PlainController],
        },
      );
      try {
        const seen: Array<[number, number, string | undefined]> = [];
        for (const ms of [0, 10, 20, 2_000, 5_019, 5_020]) {
          c.at(ms);
          const res = await request(h.server).get('/plain');
          seen.push([ms, res.status, res.headers['retry-after']]);
        }
        expect(seen).toEqual([
          [0, 200, undefined],
          [10, 200, undefined],
          [20, 429, '5'],
          // the window alone would admit again from 1.00 s
          [2_000, 429, '4'],
          [5_019, 429, '1'],
          [5_020, 200, undefined],
        ]);
      } finally {
        await h.close();
      }
    });
  },
);
