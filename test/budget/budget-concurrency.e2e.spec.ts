import { randomBytes } from 'node:crypto';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BudgetService, DEFAULT_PRICES, UsageService } from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import { sharedRedisUrl } from '../support/redis.js';
import { PLATFORMS, startSampleApp, type SampleAppHandle } from '../support/sample-app.js';
import { metricValue } from '../support/prometheus.js';

const redisUrl = sharedRedisUrl();

const BUDGET_USD = 0.001;
const MAX_TOKENS = 100;
const MESSAGES = [{ role: 'user' as const, content: 'hi' }];
const MINI = DEFAULT_PRICES['gpt-4o-mini'];
// The fake answers with far more than MAX_TOKENS, so every call uses all of them: its real cost is
// the cost the budget reserved up front (the worst case), and the budget is tested at its boundary.
const LONG_REPLY = 'word '.repeat(400);
const PROMPT = countChatPromptTokens(MESSAGES);
const EXACT_MICRO = PROMPT * MINI.input + MAX_TOKENS * MINI.output; // micro-USD, by hand
const CHARGED_MICRO = Math.ceil(EXACT_MICRO - 1e-9); // each call rounded up to the next micro-USD
const LIMIT_MICRO = BUDGET_USD * 1e6;
const FITS = Math.floor(LIMIT_MICRO / CHARGED_MICRO);

const nextUtcMidnight = () => {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1)).toISOString();
};

type Res = request.Response;

/** Checks the outcome of a flood of calls at the budget boundary. */
async function checkFlood(
  results: Res[],
  apps: SampleAppHandle[],
  fake: FakeOpenAIServer,
  user: string,
  token: string,
) {
  expect(FITS).toBeGreaterThan(2);
  expect(FITS).toBeLessThan(results.length);
  const statuses = results.map((r) => r.status);
  expect(statuses.filter((s) => s !== 200 && s !== 429)).toEqual([]);
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status === 429);
  // the reservation equals the real cost here, so exactly as many calls as fit went through
  expect(ok).toHaveLength(FITS);
  expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(FITS);
  for (const r of ok) {
    expect(r.body.usage.completion_tokens).toBe(MAX_TOKENS);
    expect(r.body.cost_usd).toBeCloseTo(EXACT_MICRO / 1e6, 12);
  }
  const resetsAt = nextUtcMidnight();
  for (const r of refused) {
    expect(r.body).toMatchObject({
      statusCode: 429,
      error: 'budget_exceeded',
      scope: 'user',
      period: 'day',
      limit_usd: BUDGET_USD,
      resets_at: resetsAt,
    });
    expect(r.body.request_id).toBe(r.headers['x-request-id']);
    const retryAfter = Number(r.headers['retry-after']);
    expect(Number.isInteger(retryAfter)).toBe(true);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(Math.abs(retryAfter - (Date.parse(resetsAt) - Date.now()) / 1000)).toBeLessThan(60);
  }

  // Spend never exceeds the budget: by the responses, by the ledger, by the budget counter.
  const responsesUsd = ok.reduce((n, r) => n + (r.body.cost_usd as number), 0);
  expect(responsesUsd).toBeLessThanOrEqual(BUDGET_USD);
  for (const h of apps) await h.app.get(UsageService).flush();
  for (const h of apps) {
    const usage = await request(h.server)
      .get('/usage')
      .set({ authorization: `Bearer ${token}` });
    expect(usage.status).toBe(200);
    expect(usage.body.requests).toBe(FITS);
    expect(usage.body.cost_usd).toBeCloseTo(responsesUsd, 9);
    expect(usage.body.cost_usd).toBeLessThanOrEqual(BUDGET_USD);
    expect(usage.body.budget).toMatchObject({ limit_usd: BUDGET_USD, period: 'day' });
    expect(Math.round(usage.body.budget.remaining_usd * 1e6)).toBe(LIMIT_MICRO - FITS * CHARGED_MICRO);
    const [day] = await h.app.get(BudgetService).status(user);
    expect(Math.round(day.spent_usd * 1e6)).toBe(FITS * CHARGED_MICRO);
    expect(day.spent_usd).toBeLessThanOrEqual(BUDGET_USD);
  }
  // every refusal is counted once in the metrics (each instance counts its own)
  let rejections = 0;
  for (const h of apps)
    rejections += metricValue(
      (await request(h.server).get('/metrics')).text,
      'openai_budget_rejections_total',
      { scope: 'user', period: 'day' },
    );
  expect(rejections).toBe(refused.length);
}

const chat = (h: SampleAppHandle, token: string) =>
  request(h.server)
    .post('/chat')
    .set({ authorization: `Bearer ${token}` })
    .send({ messages: MESSAGES, max_tokens: MAX_TOKENS });

describe.each(PLATFORMS)('50 concurrent calls at the budget boundary on %s, memory store', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ reply: () => LONG_REPLY });
    h = await startSampleApp(platform, fake, {
      BUDGET_USD_DAILY: String(BUDGET_USD),
      RATE_LIMIT_RPM: '1000',
      MODERATION: 'off',
      OPENAI_MAX_RETRIES: '0',
    });
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });

  it('never spends more than the budget; the rest get 429 budget_exceeded with retry-after and resets_at', async () => {
    const results = await Promise.all(Array.from({ length: 50 }, () => chat(h, 'alice-token')));
    await checkFlood(results, [h], fake, 'alice', 'alice-token');
    // another user has a budget of their own
    expect((await chat(h, 'bob-token')).status).toBe(200);
  });
});

describe.skipIf(!redisUrl).each(PLATFORMS)(
  '50 concurrent calls at the budget boundary on two %s instances sharing Redis',
  (platform) => {
    const tag = randomBytes(4).toString('hex');
    const user = `flood-${platform}-${tag}`;
    const token = `tok-${tag}`;
    let fake: FakeOpenAIServer;
    let a: SampleAppHandle;
    let b: SampleAppHandle;
    beforeAll(async () => {
      fake = await FakeOpenAIServer.start({ reply: () => LONG_REPLY });
      const env = {
        REDIS_URL: redisUrl,
        SAMPLE_USERS: `${user}:${token}`,
        BUDGET_USD_DAILY: String(BUDGET_USD),
        RATE_LIMIT_RPM: '1000',
        MODERATION: 'off',
        OPENAI_MAX_RETRIES: '0',
      };
      a = await startSampleApp(platform, fake, env);
      b = await startSampleApp(platform, fake, env);
    });
    afterAll(async () => {
      await a?.close();
      await b?.close();
      await fake?.close();
    });

    it('the two instances together never spend more than the budget', async () => {
      const results = await Promise.all(Array.from({ length: 50 }, (_, i) => chat(i % 2 ? a : b, token)));
      await checkFlood(results, [a, b], fake, user, token);
      // both instances served some of the admitted calls or refused some: the budget really is shared
      const served = new Set(results.map((r, i) => `${i % 2}:${r.status}`));
      expect(served.size).toBeGreaterThanOrEqual(3);
    });
  },
);
