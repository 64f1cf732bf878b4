import { describe, expect, it } from 'vitest';
import {
  BudgetService,
  OpenAIHealthService,
  StorageUnavailableException,
  type StorageFailurePolicy,
} from '../../lib/index.js';
import { fixtureOptions, startFixtureApp, TEST_API_KEY, type FixtureHandle } from '../support/fixture-app.js';
import { sharedRedisUrl, waitFor } from '../support/redis.js';
import { redisOutageSuite } from '../support/redis-outage.js';
import { tokensUsed } from '../throttling/throttling-fixture.js';

const available = sharedRedisUrl() !== '';
const MESSAGES = [{ role: 'user' as const, content: 'hi' }];

/**
 * Redis going down or coming back while a call holds its joint reservation (token limit + budget): no
 * crash, the policy's answer for new calls, and the store counts each call once after recovery.
 */
describe.skipIf(!available)('Redis down or back mid-flight, joint reservation', () => {
  const suite = redisOutageSuite();

  async function app(onFailure: StorageFailurePolicy): Promise<FixtureHandle> {
    const h = await startFixtureApp(
      'express',
      fixtureOptions(suite.fake.baseURL, TEST_API_KEY, {
        models: { default: 'gpt-4o-mini', fallbacks: [] },
        storage: {
          type: 'redis',
          redis: { url: suite.redis.url, keyPrefix: `${onFailure}:`, commandTimeoutMs: 200 },
          onFailure,
        },
        limits: { tokens: [{ name: 'minute', limit: 100_000, ttl: 60_000 }] },
        budgets: { user: { dailyUsd: 10 } },
      }),
    );
    suite.apps.push(h);
    return h;
  }
  const storeUp = async (h: FixtureHandle) => (await h.app.get(OpenAIHealthService).check()).up;
  const chat = (h: FixtureHandle, user: string) =>
    h.openai.chat({ messages: MESSAGES, max_tokens: 500 }, { user });
  const spentMicro = async (h: FixtureHandle, user: string) =>
    Math.round((await h.app.get(BudgetService).status(user))[0].spent_usd * 1e6);

  for (const policy of ['fail-closed', 'fail-open', 'memory'] as const)
    it(`${policy}: Redis dies while a call holds its reservation: the call answers, new calls get the policy`, async () => {
      const h = await app(policy);
      suite.fake.fault({ path: '/v1/chat/completions', delayMs: 400, times: 1 });
      const pending = chat(h, 'u-down');
      await waitFor('the upstream call', () => suite.fake.requestsTo('/v1/chat/completions').length === 1);
      await suite.redis.stop();
      const r = await pending;
      expect(r.content).toBeTruthy();
      const next = await chat(h, 'u-down').catch((e: unknown) => e);
      const outcome =
        next instanceof StorageUnavailableException
          ? 503
          : (next as { content?: string }).content
            ? 200
            : next;
      expect(outcome).toBe(policy === 'fail-closed' ? 503 : 200);
      await suite.redis.start();
      await waitFor('store up', async () => {
        await chat(h, 'u-after').catch(() => undefined);
        return storeUp(h);
      });
      await h.app.get(BudgetService).flush();
    });

  it('memory: a hold taken on the fallback and settled after Redis is back does not change Redis counters', async () => {
    const h = await app('memory');
    await suite.redis.stop();
    // call A reserves on the in-memory fallback (Redis down) and is slow upstream
    suite.fake.fault({ path: '/v1/chat/completions', delayMs: 1_500, times: 1 });
    const a = chat(h, 'u-mem');
    await waitFor('call A upstream', () => suite.fake.requestsTo('/v1/chat/completions').length === 1);
    expect(await storeUp(h)).toBe(false);
    await suite.redis.start();
    // Another user's calls until the store is back on Redis (a call made before that is held on the
    // fallback), then call B reserves and settles on Redis while A is still in flight.
    await waitFor('Redis back', async () => {
      await chat(h, 'u-probe');
      return storeUp(h);
    });
    const b = await chat(h, 'u-mem');
    const before = await spentMicro(h, 'u-mem');
    const tokensBefore = await tokensUsed(h.app, 'u-mem');
    expect(tokensBefore).toBe(b.usage.total_tokens);
    // call A settles (its real cost is far below its hold): it must not take anything off Redis' counter
    const ra = await a;
    expect(ra.content).toBeTruthy();
    await h.app.get(BudgetService).flush();
    await new Promise((r) => setTimeout(r, 50));
    expect(await spentMicro(h, 'u-mem')).toBe(before);
    expect(await tokensUsed(h.app, 'u-mem')).toBe(tokensBefore);
  });
});
