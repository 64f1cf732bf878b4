import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BudgetService, DEFAULT_PRICES, type StorageFailurePolicy } from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import { fixtureOptions, startFixtureApp, TEST_API_KEY } from '../support/fixture-app.js';
import { OwnRedis, redisClient, sharedRedisUrl, waitFor } from '../support/redis.js';
import { tokensUsed } from '../throttling/throttling-fixture.js';

const available = sharedRedisUrl() !== '';
const MESSAGES = [{ role: 'user' as const, content: 'hi' }];
const PROMPT = countChatPromptTokens(MESSAGES);
const MINI = DEFAULT_PRICES['gpt-4o-mini'];

/**
 * Redis stalls (CLIENT PAUSE: no data lost) while a call's settlement is written: once it answers again,
 * the counters hold the call's real usage, not its whole reservation.
 */
describe.skipIf(!available)('a Redis stall during the settlement', () => {
  let redis: OwnRedis;
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    redis = await OwnRedis.start();
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await redis.stop();
    await fake.close();
  });

  for (const policy of ['fail-closed', 'memory'] as const satisfies StorageFailurePolicy[])
    it(`${policy}: the settled counts are the call's usage once Redis answers again`, async () => {
      const h = await startFixtureApp(
        'express',
        fixtureOptions(fake.baseURL, TEST_API_KEY, {
          models: { default: 'gpt-4o-mini', fallbacks: [] },
          storage: {
            type: 'redis',
            redis: { url: redis.url, keyPrefix: `pause-${policy}:`, commandTimeoutMs: 150 },
            onFailure: policy,
          },
          limits: { tokens: [{ name: 'minute', limit: 100_000, ttl: 60_000 }] },
          budgets: { user: { dailyUsd: 10 } },
        }),
      );
      const admin = redisClient(redis.url);
      try {
        fake.fault({ path: '/v1/chat/completions', delayMs: 300, times: 1 });
        const pending = h.openai.chat({ messages: MESSAGES, max_tokens: 2_000 }, { user: 'u-pause' });
        await waitFor('the upstream call', () => fake.requestsTo('/v1/chat/completions').length === 1);
        await admin.call('CLIENT', 'PAUSE', '800', 'WRITE');
        const r = await pending;
        // the settlement's write timed out: the store was marked down
        await waitFor('the store marked down', () => h.logger.text().includes('store unavailable'), 2_000);
        await new Promise((res) => setTimeout(res, 1_200));
        await h.app.get(BudgetService).flush();
        const real = Math.ceil(
          r.usage.prompt_tokens * MINI.input + r.usage.completion_tokens * MINI.output - 1e-9,
        );
        expect(r.usage.prompt_tokens).toBe(PROMPT);
        const [day] = await h.app.get(BudgetService).status('u-pause');
        expect({
          tokens: await tokensUsed(h.app, 'u-pause'),
          spent: Math.round(day.spent_usd * 1e6),
        }).toEqual({ tokens: r.usage.total_tokens, spent: real });
      } finally {
        admin.disconnect();
        await h.close();
      }
    });
});
