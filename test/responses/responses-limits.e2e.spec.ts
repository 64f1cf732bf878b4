import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BudgetService, RateLimitService, UsageService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { waitFor } from '../support/redis.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { RESPONSES, ResponsesFixtureController } from './responses-fixture.js';

const TPM = 300;
const MODEL = 'gpt-4o-mini-2024-07-18';

async function tokensUsed(h: FixtureHandle, user: string): Promise<number> {
  const limits = h.app.get(RateLimitService);
  const { tokens } = await limits.limitsFor(user);
  return (await limits.reserveTokens(user, 0, tokens)).windows[0].used;
}

describe.each(PLATFORMS)('token limits and budgets on POST /responses on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        limits: { tokens: [{ name: 'minute', limit: TPM, ttl: 60_000 }] },
        // 1 USD per 1M tokens: a call costs its token count in micro-USD
        pricing: { models: { [MODEL]: { input: 1, output: 1 } } },
        budgets: {
          user: { dailyUsd: 1 },
          userLimits: (u) => (u.startsWith('poor') ? { dailyUsd: 100e-6 } : undefined),
        },
        retry: { maxRetries: 1 },
      }),
      { controllers: [ResponsesFixtureController] },
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
  });
  const post = (user: string, body: object) =>
    request(h.server).post('/responses').set('x-user', user).send(body);

  it('reserves prompt + max_output_tokens while in flight, settles to the real usage; one token over is a 429', async () => {
    const user = `tok-${platform}`;
    fake.fault({ path: RESPONSES, delayMs: 200, times: 1 });
    const pending = post(user, {
      instructions: 'be brief',
      input: 'hello there',
      max_output_tokens: 100,
    }).then((r) => r);
    await waitFor('the upstream call', () => fake.requestsTo(RESPONSES).length === 1);
    const held = await tokensUsed(h, user);
    // prompt (instructions + input, counted locally) + the output cap
    expect(held).toBeGreaterThan(100);
    expect(held).toBeLessThan(100 + 40);
    const res = await pending;
    expect(res.status).toBe(200);
    expect(res.body.usage.estimated).toBe(false);
    expect(res.body.usage.total_tokens).toBeLessThan(held);
    const used = await tokensUsed(h, user);
    expect(used).toBe(res.body.usage.total_tokens);

    const promptOf = held - 100;
    const left = TPM - used;
    const refused = await post(user, {
      instructions: 'be brief',
      input: 'hello there',
      max_output_tokens: left - promptOf + 1,
    });
    expect(refused.status).toBe(429);
    expect(refused.body).toMatchObject({ statusCode: 429, error: 'token_limit_exceeded', limit: 'minute' });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(fake.requestsTo(RESPONSES)).toHaveLength(1);
    expect(await tokensUsed(h, user)).toBe(used);
    const exact = await post(user, {
      instructions: 'be brief',
      input: 'hello there',
      max_output_tokens: left - promptOf,
    });
    expect(exact.status).toBe(200);
    expect(await tokensUsed(h, user)).toBe(used + exact.body.usage.total_tokens);
  });

  it('a reservation larger than the whole window: 413, no upstream call, nothing counted', async () => {
    const user = `big-${platform}`;
    const res = await post(user, { input: 'hi', max_output_tokens: TPM });
    expect(res.status).toBe(413);
    expect(res.body.error).toBe('token_limit_exceeds_window');
    expect(fake.requestsTo(RESPONSES)).toHaveLength(0);
    expect(await tokensUsed(h, user)).toBe(0);
  });

  it('an upstream 500 after retries gives the reservation back', async () => {
    const user = `fail-${platform}`;
    fake.fault({ path: RESPONSES, status: 500 });
    const res = await post(user, { input: 'boom', max_output_tokens: 200 });
    expect(res.status).toBe(502);
    expect(fake.requestsTo(RESPONSES)).toHaveLength(2);
    expect(await tokensUsed(h, user)).toBe(0);
  });

  it('the token limit holds across responses and chat calls of one user', async () => {
    const user = `mixed-${platform}`;
    const a = await post(user, { input: 'first', max_output_tokens: 50 });
    expect(a.status).toBe(200);
    const c = await request(h.server)
      .post('/chat')
      .set('x-user', user)
      .send({ messages: [{ role: 'user', content: 'second' }], max_tokens: 50 });
    expect(c.status).toBe(200);
    expect(await tokensUsed(h, user)).toBe(a.body.usage.total_tokens + c.body.usage.total_tokens);
  });

  it('a budget that cannot hold the call: 429 budget_exceeded, no upstream call; a call that fits is settled to its cost', async () => {
    const user = `poor-${platform}`;
    const ok = await post(user, { input: 'cheap', max_output_tokens: 20 });
    expect(ok.status).toBe(200);
    expect(ok.body.cost_usd).toBeCloseTo(ok.body.usage.total_tokens / 1e6, 12);
    const budgets = h.app.get(BudgetService);
    const [status] = await budgets.status(user);
    expect(Math.round(status.spent_usd * 1e6)).toBe(ok.body.usage.total_tokens);

    const refused = await post(user, { input: 'expensive', max_output_tokens: 100 });
    expect(refused.status).toBe(429);
    expect(refused.body).toMatchObject({ error: 'budget_exceeded', scope: 'user', period: 'day' });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(fake.requestsTo(RESPONSES)).toHaveLength(1);
    const [after] = await budgets.status(user);
    expect(after.spent_usd).toBe(status.spent_usd);
    const usage = h.app.get(UsageService);
    await usage.flush();
    expect((await usage.totals(user)).requests).toBe(1);
  });
});
