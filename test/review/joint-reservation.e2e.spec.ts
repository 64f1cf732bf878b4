import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BudgetExceededException,
  BudgetService,
  DEFAULT_PRICES,
  RateLimitExceededException,
  type OpenAIModuleOptions,
} from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import { fixtureOptions, startFixtureApp, TEST_API_KEY, type FixtureHandle } from '../support/fixture-app.js';
import { sharedRedisUrl, uniquePrefix } from '../support/redis.js';
import { tokensUsed } from '../throttling/throttling-fixture.js';

const redisUrl = sharedRedisUrl();
const MESSAGES = [{ role: 'user' as const, content: 'hi' }];
const MAX_TOKENS = 100;
const PROMPT = countChatPromptTokens(MESSAGES);
const RESERVED = PROMPT + MAX_TOKENS;
const MINI = DEFAULT_PRICES['gpt-4o-mini'];
const CHARGED_MICRO = Math.ceil(PROMPT * MINI.input + MAX_TOKENS * MINI.output - 1e-9);
const N = 500;

type Store = 'memory' | 'redis';
const stores: Store[] = redisUrl ? ['memory', 'redis'] : ['memory'];

/**
 * 500 concurrent calls of one user against a token limit and a user budget: exactly the calls that fit
 * the tighter of the two pass; a refusal by one leaves the other's counter untouched.
 */
describe.each(stores)('joint token + budget reservation under concurrency (%s store)', (store) => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    // replies longer than max_tokens: every call uses its whole reservation (the real cost = the hold)
    fake = await FakeOpenAIServer.start({ reply: () => 'word '.repeat(400) });
  });
  afterAll(async () => {
    await fake.close();
  });

  async function run(tokenFits: number, budgetFits: number) {
    const storage: OpenAIModuleOptions['storage'] =
      store === 'redis'
        ? { type: 'redis', redis: { url: redisUrl, keyPrefix: uniquePrefix('review-joint') } }
        : { type: 'memory' };
    const h: FixtureHandle = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: { default: 'gpt-4o-mini' },
        storage,
        limits: { tokens: [{ name: 'minute', limit: tokenFits * RESERVED + RESERVED - 1, ttl: 60_000 }] },
        budgets: { user: { dailyUsd: (budgetFits * CHARGED_MICRO + CHARGED_MICRO - 1) / 1e6 } },
      }),
    );
    try {
      fake.reset();
      const user = `u-${Math.random().toString(36).slice(2)}`;
      const results = await Promise.allSettled(
        Array.from({ length: N }, () =>
          h.openai.chat({ messages: MESSAGES, max_tokens: MAX_TOKENS }, { user }),
        ),
      );
      const ok = results.filter((r) => r.status === 'fulfilled');
      const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
      await h.app.get(BudgetService).flush();
      const tokens = await tokensUsed(h.app, user);
      const [day] = await h.app.get(BudgetService).status(user);
      return {
        ok,
        errors,
        tokens,
        spentMicro: Math.round(day.spent_usd * 1e6),
        upstream: fake.requestsTo('/v1/chat/completions').length,
      };
    } finally {
      await h.close();
    }
  }

  it('the token limit is the tighter: exactly its fits pass, the rest are token 429s, the budget counts only the passed', async () => {
    const r = await run(37, 200);
    expect(r.ok).toHaveLength(37);
    expect(r.upstream).toBe(37);
    expect(r.errors.filter((e) => !(e instanceof RateLimitExceededException))).toEqual([]);
    expect(r.tokens).toBe(37 * RESERVED);
    expect(r.spentMicro).toBe(37 * CHARGED_MICRO);
  });

  it('the budget is the tighter: exactly its fits pass, the rest are budget 429s, the token window counts only the passed', async () => {
    const r = await run(300, 23);
    expect(r.ok).toHaveLength(23);
    expect(r.upstream).toBe(23);
    expect(r.errors.filter((e) => !(e instanceof BudgetExceededException))).toEqual([]);
    expect(r.tokens).toBe(23 * RESERVED);
    expect(r.spentMicro).toBe(23 * CHARGED_MICRO);
  });
});
