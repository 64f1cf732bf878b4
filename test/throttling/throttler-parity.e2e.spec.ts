import {
  Controller,
  Get,
  Res,
  UseGuards,
  type DynamicModule,
  type ExecutionContext,
  type Type,
} from '@nestjs/common';
import { SkipThrottle, Throttle, ThrottlerGuard, ThrottlerModule } from '@nestjs/throttler';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  OpenAIConfigError,
  OpenAIThrottlerGuard,
  rawResponse,
  type OpenAIModuleOptions,
  type RequestLimitDetail,
} from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { sseText, type FixtureHandle } from '../support/fixture-app.js';
import { PLATFORMS } from '../support/sample-app.js';
import { LimitedController, requestsUsed, startThrottlingApp } from './throttling-fixture.js';

const MINUTE = { name: 'minute', limit: 5, ttl: 60_000 };
const DAY = { name: 'day', limit: 50, ttl: 86_400_000 };
const WINDOWS = [MINUTE, DAY];
const ONE_A_MINUTE = [{ name: 'minute', limit: 1, ttl: 60_000 }];

const bearer = (user: string) => ({ authorization: `Bearer ${user}-token` });
const rl = (res: request.Response) => [
  res.headers['x-ratelimit-limit'],
  res.headers['x-ratelimit-remaining'],
];
const plan = (ctx: ExecutionContext) =>
  ctx.switchToHttp().getRequest<{ headers: Record<string, string> }>().headers['x-plan'];

/** Routes with @nestjs/throttler's decorators, as a throttler user writes them. */
@Controller('p')
@UseGuards(OpenAIThrottlerGuard)
class ParityController {
  @Get('ping')
  ping() {
    return { ok: true };
  }

  // the line every throttler user writes
  @Throttle({ default: { limit: 2, ttl: 60_000 } })
  @Get('default')
  byDefault() {
    return { ok: true };
  }

  @Throttle({ default: { limit: 2, ttl: 60_000 } })
  @Get('default-too')
  byDefaultToo() {
    return { ok: true };
  }

  @Throttle({ minute: { limit: 2, ttl: 60_000 } })
  @Get('strict-a')
  strictA() {
    return { ok: true };
  }

  @Throttle({ minute: { limit: 2, ttl: 60_000 } })
  @Get('strict-b')
  strictB() {
    return { ok: true };
  }

  @Throttle({
    minute: { limit: (ctx: ExecutionContext) => (plan(ctx) === 'pro' ? 3 : 1), ttl: () => 60_000 },
  })
  @Get('by-plan')
  byPlan() {
    return { ok: true };
  }

  @SkipThrottle({ day: true })
  @Get('no-day')
  noDay() {
    return { ok: true };
  }

  @Get('reply-header')
  replyHeader(@Res({ passthrough: true }) res: { getHeader?: (n: string) => unknown }) {
    // what Express's res.getHeader / Fastify's reply.getHeader see while the handler runs
    return { remaining: res.getHeader?.('x-ratelimit-remaining') ?? null };
  }

  @Get('sse')
  sse(@Res() res: { hijack?: () => void }) {
    res.hijack?.();
    const raw = rawResponse(res);
    raw.writeHead(200, { 'content-type': 'text/event-stream' });
    raw.end('data: [DONE]\n\n');
  }
}

/** `@SkipThrottle()` on the controller, one window put back on a handler (as in @nestjs/throttler). */
@Controller('skip')
@UseGuards(OpenAIThrottlerGuard)
@SkipThrottle()
class SkippedController {
  @Get('all')
  all() {
    return { ok: true };
  }

  @SkipThrottle({ minute: false })
  @Get('minute-only')
  minuteOnly() {
    return { ok: true };
  }
}

const CONTROLLERS = [ParityController, SkippedController];

describe.each(PLATFORMS)('@nestjs/throttler parity of OpenAIThrottlerGuard on %s', (platform) => {
  let fake: FakeOpenAIServer;
  const apps: FixtureHandle[] = [];
  const start = async (options: OpenAIModuleOptions, controllers: Type[] = CONTROLLERS) => {
    const h = await startThrottlingApp(platform, fake.baseURL, options, { controllers });
    apps.push(h);
    return h;
  };
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    for (const h of apps) await h.close();
    await fake.close();
  });

  describe('two windows (minute: 5, day: 50), per-route overrides', () => {
    let h: FixtureHandle;
    beforeAll(async () => {
      h = await start({ limits: { requests: WINDOWS } });
    });

    it('@Throttle({ default: { limit: 2, ttl } }) applies: 2 per route and user, its own counter, named "default"', async () => {
      const got = [];
      for (let i = 0; i < 3; i++) got.push(await request(h.server).get('/p/default').set(bearer('alice')));
      expect(got.map((r) => r.status)).toEqual([200, 200, 429]);
      expect(got.slice(0, 2).map(rl)).toEqual([
        ['2', '1'],
        ['2', '0'],
      ]);
      expect(got[2].body).toMatchObject({ error: 'rate_limit_exceeded', limit: 'default' });
      expect(got[2].body.message).toMatch(/"default" \(2 requests per window\)/);
      // a per-route counter: another route with the same override starts afresh ...
      const other = await request(h.server).get('/p/default-too').set(bearer('alice'));
      expect([other.status, ...rl(other)]).toEqual([200, '2', '1']);
      // ... another user too, and the user's shared windows were not counted (the override replaces them)
      expect((await request(h.server).get('/p/default').set(bearer('bob'))).status).toBe(200);
      expect(await requestsUsed(h.app, 'user:alice', WINDOWS)).toEqual([0, 0]);
      const ping = await request(h.server).get('/p/ping').set(bearer('alice'));
      expect(rl(ping)).toEqual(['5', '4']);
    });

    it('@Throttle({ minute }) counts per route (the default overrideScope), the day window stays shared', async () => {
      for (const path of ['/p/strict-a', '/p/strict-a'])
        expect((await request(h.server).get(path).set(bearer('carol'))).status).toBe(200);
      expect((await request(h.server).get('/p/strict-a').set(bearer('carol'))).status).toBe(429);
      const b = await request(h.server).get('/p/strict-b').set(bearer('carol'));
      expect([b.status, ...rl(b)]).toEqual([200, '2', '1']);
      // the refused request counted nowhere; the three admitted ones count in the shared day window
      expect(await requestsUsed(h.app, 'user:carol', WINDOWS)).toEqual([0, 3]);
    });

    it('function-valued limit and ttl are resolved with the ExecutionContext', async () => {
      const free = [];
      for (let i = 0; i < 2; i++) free.push(await request(h.server).get('/p/by-plan').set(bearer('dave')));
      expect(free.map((r) => r.status)).toEqual([200, 429]);
      expect(rl(free[0])).toEqual(['1', '0']);
      const pro = [];
      for (let i = 0; i < 4; i++)
        pro.push(await request(h.server).get('/p/by-plan').set(bearer('erin')).set('x-plan', 'pro'));
      expect(pro.map((r) => r.status)).toEqual([200, 200, 200, 429]);
      expect(rl(pro[0])).toEqual(['3', '2']);
    });

    it('@SkipThrottle() skips every window; { minute: false } on a handler puts that one back', async () => {
      for (let i = 0; i < 7; i++) {
        const res = await request(h.server).get('/skip/all').set(bearer('frank'));
        expect(res.status).toBe(200);
        expect(res.headers['x-ratelimit-limit']).toBeUndefined();
      }
      expect(await requestsUsed(h.app, 'user:frank', WINDOWS)).toEqual([0, 0]);
      const res = await request(h.server).get('/skip/minute-only').set(bearer('frank'));
      expect(rl(res)).toEqual(['5', '4']);
      expect(await requestsUsed(h.app, 'user:frank', WINDOWS)).toEqual([1, 0]);
    });

    it('@SkipThrottle({ day: true }) skips only the day window', async () => {
      const res = await request(h.server).get('/p/no-day').set(bearer('grace'));
      expect(rl(res)).toEqual(['5', '4']);
      expect(await requestsUsed(h.app, 'user:grace', WINDOWS)).toEqual([1, 0]);
    });

    it('headers go through the framework (res.header / reply.header) and survive a hijacked reply', async () => {
      const res = await request(h.server).get('/p/reply-header').set(bearer('heidi'));
      expect(res.body).toEqual({ remaining: '4' });
      const sse = await request(h.server).get('/p/sse').set(bearer('heidi')).buffer(true).parse(sseText);
      expect(sse.status).toBe(200);
      expect(sse.body).toContain('data: [DONE]');
      expect(rl(sse)).toEqual(['5', '3']);
    });
  });

  it("overrideScope 'user': overridden windows share one per-user counter across routes", async () => {
    const h = await start({ limits: { requests: WINDOWS, overrideScope: 'user' } });
    const a = await request(h.server).get('/p/strict-a').set(bearer('alice'));
    const b = await request(h.server).get('/p/strict-b').set(bearer('alice'));
    const c = await request(h.server).get('/p/strict-a').set(bearer('alice'));
    expect([a.status, b.status, c.status]).toEqual([200, 200, 429]);
    expect([rl(a), rl(b)]).toEqual([
      ['2', '1'],
      ['2', '0'],
    ]);
    // the same ttl: the user's own minute window, which the plain route counts in too
    expect(await requestsUsed(h.app, 'user:alice', WINDOWS)).toEqual([2, 2]);
    const ping = await request(h.server).get('/p/ping').set(bearer('alice'));
    expect(rl(ping)).toEqual(['5', '2']);
    // @Throttle({ default }) in 'user' scope: one counter for both routes
    expect((await request(h.server).get('/p/default').set(bearer('bob'))).status).toBe(200);
    expect((await request(h.server).get('/p/default-too').set(bearer('bob'))).status).toBe(200);
    expect((await request(h.server).get('/p/default').set(bearer('bob'))).status).toBe(429);
  });

  it('limits.skipIf and limits.ignoreUserAgents: neither counted nor checked', async () => {
    const h = await start(
      {
        limits: {
          requests: ONE_A_MINUTE,
          skipIf: (ctx) => plan(ctx) === 'internal',
          ignoreUserAgents: [/kube-probe/i],
        },
      },
      [LimitedController],
    );
    for (let i = 0; i < 3; i++) {
      const skipped = await request(h.server).get('/ping').set(bearer('carol')).set('x-plan', 'internal');
      const probe = await request(h.server)
        .get('/ping')
        .set(bearer('carol'))
        .set('user-agent', 'kube-probe/1.29');
      expect([skipped.status, probe.status]).toEqual([200, 200]);
      expect([skipped.headers['x-ratelimit-limit'], probe.headers['x-ratelimit-limit']]).toEqual([
        undefined,
        undefined,
      ]);
    }
    expect(await requestsUsed(h.app, 'user:carol', ONE_A_MINUTE)).toEqual([0]);
    const counted = await request(h.server).get('/ping').set(bearer('carol')).set('user-agent', 'curl/8');
    expect(rl(counted)).toEqual(['1', '0']);
    expect((await request(h.server).get('/ping').set(bearer('carol'))).status).toBe(429);
  });

  it('limits.errorMessage (string or function of the context and the window) is the 429 message', async () => {
    const seen: RequestLimitDetail[] = [];
    const h1 = await start({ limits: { requests: ONE_A_MINUTE, errorMessage: 'Slow down, please' } }, [
      LimitedController,
    ]);
    const h2 = await start(
      {
        limits: {
          requests: ONE_A_MINUTE,
          errorMessage: (ctx, detail) => {
            seen.push(detail);
            return `${ctx.getHandler().name}: ${detail.name} allows ${detail.limit}`;
          },
        },
      },
      [LimitedController],
    );
    for (const h of [h1, h2]) await request(h.server).get('/ping').set(bearer('dave'));
    const r1 = await request(h1.server).get('/ping').set(bearer('dave'));
    const r2 = await request(h2.server).get('/ping').set(bearer('dave'));
    expect(r1.status).toBe(429);
    expect(r1.body).toMatchObject({
      error: 'rate_limit_exceeded',
      message: 'Slow down, please',
      limit: 'minute',
    });
    expect(r2.body).toMatchObject({ error: 'rate_limit_exceeded', message: 'ping: minute allows 1' });
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({
      name: 'minute',
      limit: 1,
      ttl: 60_000,
      tracker: 'user:dave',
      isBlocked: true,
    });
    expect(seen[0].timeToExpire).toBeGreaterThanOrEqual(1);
  });

  it('limits.setHeaders: false sends no x-ratelimit-* and no retry-after, still limits', async () => {
    const h = await start({ limits: { requests: ONE_A_MINUTE, setHeaders: false } }, [LimitedController]);
    const ok = await request(h.server).get('/ping').set(bearer('erin'));
    const refused = await request(h.server).get('/ping').set(bearer('erin'));
    expect([ok.status, refused.status]).toEqual([200, 429]);
    for (const res of [ok, refused])
      expect(
        Object.keys(res.headers).filter((k) => k.startsWith('x-ratelimit') || k === 'retry-after'),
      ).toEqual([]);
    expect(refused.body.retry_after).toBeGreaterThanOrEqual(1);
  });

  it('blockDuration of a window: a refused user stays refused after the window frees', async () => {
    const h = await start(
      { limits: { requests: [{ name: 'second', limit: 1, ttl: 1_000, blockDuration: 4_000 }] } },
      [LimitedController],
    );
    expect((await request(h.server).get('/ping').set(bearer('frank'))).status).toBe(200);
    const refused = await request(h.server).get('/ping').set(bearer('frank'));
    expect(refused.status).toBe(429);
    // the window alone would free the request within 1 s; the block holds for 4 s from the refusal
    await new Promise((r) => setTimeout(r, 1_500));
    const still = await request(h.server).get('/ping').set(bearer('frank'));
    expect(still.status).toBe(429);
    expect(Number(still.headers['retry-after'])).toBeGreaterThanOrEqual(2);
    // another user is not blocked
    expect((await request(h.server).get('/ping').set(bearer('grace'))).status).toBe(200);
  });

  describe('what the guard cannot honour fails at boot', () => {
    @Controller('unknown')
    @UseGuards(OpenAIThrottlerGuard)
    class UnknownWindowController {
      @Throttle({ short: { limit: 1, ttl: 1_000 } })
      @Get()
      get() {
        return { ok: true };
      }

      @SkipThrottle({ long: true })
      @Get('skip')
      skip() {
        return { ok: true };
      }
    }

    @Controller('tracker')
    @UseGuards(OpenAIThrottlerGuard)
    class PerRouteTrackerController {
      @Throttle({ minute: { limit: 1, ttl: 1_000, getTracker: (req) => String(req.ip) } })
      @Get()
      get() {
        return { ok: true };
      }
    }

    @Controller('plain')
    @UseGuards(ThrottlerGuard)
    class PlainController {
      // a ThrottlerModule throttler on a route of the plain guard: not ours to check
      @Throttle({ short: { limit: 1, ttl: 1_000 } })
      @Get()
      get() {
        return { ok: true };
      }
    }

    const boot = (options: OpenAIModuleOptions, controllers: Type[], imports: DynamicModule[] = []) =>
      startThrottlingApp(platform, fake.baseURL, options, { controllers, imports }).then(
        (h) => (apps.push(h), undefined),
        (e: unknown) => e as Error,
      );

    it('@Throttle / @SkipThrottle naming a window limits.requests does not have', async () => {
      const err = await boot({ limits: { requests: WINDOWS } }, [UnknownWindowController]);
      expect(err).toBeInstanceOf(OpenAIConfigError);
      expect(err!.message).toContain('@Throttle({ short }) on UnknownWindowController.get');
      expect(err!.message).toContain('@SkipThrottle({ long }) on UnknownWindowController.skip');
      expect(err!.message).toMatch(/windows: minute, day, default/);
    });

    it('a per-route getTracker', async () => {
      const err = await boot({ limits: { requests: WINDOWS } }, [PerRouteTrackerController]);
      expect(err).toBeInstanceOf(OpenAIConfigError);
      expect(err!.message).toMatch(
        /getTracker.*PerRouteTrackerController\.get.*does not support a per-route tracker/,
      );
    });

    it("ThrottlerModule options that only OpenAIThrottlerGuard's routes could have used", async () => {
      const err = await boot(
        { limits: { requests: WINDOWS } },
        [ParityController],
        [ThrottlerModule.forRoot([{ limit: 3, ttl: 60_000 }])],
      );
      expect(err).toBeInstanceOf(OpenAIConfigError);
      expect(err!.message).toMatch(/ThrottlerModule.*OpenAIThrottlerGuard ignores them/);
      // with the plain guard on its own routes, ThrottlerModule's options are used: the app boots
      expect(
        await boot(
          { limits: { requests: WINDOWS } },
          [ParityController, PlainController],
          [ThrottlerModule.forRoot([{ name: 'short', limit: 3, ttl: 60_000 }])],
        ),
      ).toBeUndefined();
    });

    it('ThrottlerModule habits in the limits options', async () => {
      const err = await boot(
        {
          limits: {
            throttlers: [{ limit: 3, ttl: 60_000 }],
            requests: [{ ...MINUTE, skipIf: () => true }],
            setHeaders: 'no',
          } as never,
        },
        [ParityController],
      );
      expect(err).toBeInstanceOf(OpenAIConfigError);
      expect(err!.message).toMatch(/limits\.throttlers: is ThrottlerModule's option/);
      expect(err!.message).toMatch(/limits\.requests\[0\]\.skipIf: is not supported per window/);
      expect(err!.message).toMatch(/limits\.setHeaders: must be true or false/);
    });
  });
});
