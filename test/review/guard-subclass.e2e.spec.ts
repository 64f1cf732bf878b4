import { Controller, Get, Injectable, UseGuards, type ExecutionContext } from '@nestjs/common';
import { Throttle } from '@nestjs/throttler';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenAIThrottlerGuard } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { PLATFORMS, type FixtureHandle } from '../support/fixture-app.js';
import { startThrottlingApp } from '../throttling/throttling-fixture.js';

/** ThrottlerGuard's extension points, overridden the way `@nestjs/throttler` users do. */
@Injectable()
class ClientGuard extends OpenAIThrottlerGuard {
  protected override async getTracker(req: Record<string, any>): Promise<string> {
    await new Promise((r) => setImmediate(r));
    return `client:${String(req.headers['x-client'])}`;
  }
  protected override async shouldSkip(context: ExecutionContext): Promise<boolean> {
    const req = context.switchToHttp().getRequest<{ headers: Record<string, string> }>();
    return req.headers['x-skip'] === '1';
  }
}

let calls = 0;

@Controller('sub')
@UseGuards(ClientGuard)
class SubController {
  @Get('a')
  a() {
    return { ok: true };
  }
  @Get('fn')
  @Throttle({ minute: { limit: () => (++calls % 2 === 1 ? 1 : 3), ttl: 60_000 } })
  fn() {
    return { ok: true };
  }
}

describe.each(PLATFORMS)('a subclass of OpenAIThrottlerGuard on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startThrottlingApp(
      platform,
      fake.baseURL,
      { limits: { requests: [{ name: 'minute', limit: 2, ttl: 60_000 }] } },
      { controllers: [SubController] },
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });

  it("its getTracker keys the counter, its shouldSkip skips, and the headers say the window's state", async () => {
    const get = (client: string, skip = false) =>
      request(h.server)
        .get('/sub/a')
        .set({ 'x-client': client, ...(skip ? { 'x-skip': '1' } : {}) });
    const c1 = `c1-${platform}`;
    const c2 = `c2-${platform}`;
    const r1 = await get(c1);
    expect([r1.status, r1.headers['x-ratelimit-remaining']]).toEqual([200, '1']);
    const skipped = await get(c1, true);
    expect([skipped.status, skipped.headers['x-ratelimit-remaining']]).toEqual([200, undefined]);
    expect((await get(c1)).status).toBe(200);
    const refused = await get(c1);
    expect(refused.status).toBe(429);
    expect(refused.body.error).toBe('rate_limit_exceeded');
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await get(c1, true)).status).toBe(200);
    expect((await get(c2)).status).toBe(200);
  });

  it('a function-valued @Throttle limit is resolved per request (not cached with the route)', async () => {
    calls = 0;
    const get = () =>
      request(h.server)
        .get('/sub/fn')
        .set({ 'x-client': `fn-${platform}` });
    // limits per request: 1, 3, 1, 3 → the 1st passes (1 <= 1); the 2nd passes (2 <= 3); the 3rd is
    // refused (3 > 1); the 4th passes (3 <= 3)
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await get()).status);
    expect(statuses).toEqual([200, 200, 429, 200]);
  });
});
