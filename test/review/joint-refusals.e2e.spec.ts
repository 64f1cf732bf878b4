import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BudgetService, DEFAULT_PRICES } from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
  type Platform,
} from '../support/fixture-app.js';
import { sharedRedisUrl, uniquePrefix } from '../support/redis.js';
import { tokensUsed } from '../throttling/throttling-fixture.js';

const MESSAGES = [{ role: 'user' as const, content: 'hi' }];
const PROMPT = countChatPromptTokens(MESSAGES);
const MINI = DEFAULT_PRICES['gpt-4o-mini'];
const micro = (maxTokens: number) => Math.ceil(PROMPT * MINI.input + maxTokens * MINI.output - 1e-9);
const TPM = 1_000;

/** The HTTP answer of each refusal of the joint reservation, and what each leaves in the other counter. */
const redisUrl = sharedRedisUrl();
const CASES: Array<[Platform, 'memory' | 'redis']> = [
  ...PLATFORMS.map((p): [Platform, 'memory'] => [p, 'memory']),
  ...(redisUrl ? [['express', 'redis'] as [Platform, 'redis']] : []),
];

describe.each(CASES)('joint reservation refusals over HTTP on %s (%s store)', (platform, store) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ reply: () => 'word '.repeat(2_000) });
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: { default: 'gpt-4o-mini' },
        ...(store === 'redis'
          ? {
              storage: {
                type: 'redis',
                redis: { url: redisUrl, keyPrefix: uniquePrefix('review-refusals') },
              },
            }
          : {}),
        identity: { resolve: (req: { headers: Record<string, string> }) => req.headers['x-user'] },
        limits: { tokens: [{ name: 'minute', limit: TPM, ttl: 60_000 }] },
        // room for 2 calls of 400 max_tokens in the user's budget; the project's is large
        budgets: { user: { dailyUsd: (2 * micro(400) + 1) / 1e6 }, project: { dailyUsd: 100 } },
      }),
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  const chat = (user: string, maxTokens: number) =>
    request(h.server)
      .post('/chat')
      .set({ 'x-user': user })
      .send({ messages: MESSAGES, max_tokens: maxTokens });
  const spent = async (user: string | null) =>
    Math.round(((await h.app.get(BudgetService).status(user))[0]?.spent_usd ?? 0) * 1e6);

  it('a reservation larger than the token window: 413 token_limit_exceeds_window, no budget held', async () => {
    const user = `big-${platform}`;
    const projectBefore = await spent(null);
    const r = await chat(user, TPM + 1);
    expect(r.status).toBe(413);
    expect(r.body.error).toBe('token_limit_exceeds_window');
    await h.app.get(BudgetService).flush();
    expect(await spent(user)).toBe(0);
    expect(await spent(null)).toBe(projectBefore);
    expect(await tokensUsed(h.app, user)).toBe(0);
  });

  it('the token window refuses: 429 token_limit_exceeded with retry-after and x-ratelimit-*, budget untouched', async () => {
    const user = `tok-${platform}`;
    expect((await chat(user, 400)).status).toBe(200);
    const spentAfterOne = await spent(user);
    expect(spentAfterOne).toBe(micro(400));
    await h.app.get(BudgetService).flush();
    const projectBefore = await spent(null);
    // 2 x (PROMPT + 600) > 1000: the token window refuses this one
    const r = await chat(user, 600);
    expect(r.status).toBe(429);
    expect(r.body.error).toBe('token_limit_exceeded');
    expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(r.headers['x-ratelimit-limit']).toBe(String(TPM));
    await h.app.get(BudgetService).flush();
    expect(await spent(user)).toBe(spentAfterOne);
    // the project's hold (taken on this instance's lease before the joint consume) is given back too
    expect(await spent(null)).toBe(projectBefore);
    expect(await tokensUsed(h.app, user)).toBe(PROMPT + 400);
  });

  it('the budget refuses: 429 budget_exceeded with retry-after, token window untouched', async () => {
    const user = `bud-${platform}`;
    expect((await chat(user, 400)).status).toBe(200);
    expect((await chat(user, 10)).status).toBe(200);
    const tokens = await tokensUsed(h.app, user);
    expect(tokens).toBe(2 * PROMPT + 410);
    const r = await chat(user, 400);
    expect(r.status).toBe(429);
    expect(r.body.error).toBe('budget_exceeded');
    expect(r.body.scope).toBe('user');
    expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(await tokensUsed(h.app, user)).toBe(tokens);
  });
});
