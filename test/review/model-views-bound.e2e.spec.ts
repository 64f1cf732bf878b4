import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPENAI_STORE, OpenAIHealthService, type OpenAIStore } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';

const DISTINCT = 1_500;

/**
 * With `models.requested: 'any'` (the default outside staging and production) the caller names the
 * model: each distinct name must not add, forever, a breaker and a pacing view that every periodic
 * re-sync reads from the store.
 */
describe('breaker and pacing views under many distinct model names', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: { default: 'gpt-4o-mini', requested: 'any', pinning: 'off', fallbacks: [] },
        breaker: { failures: 5, syncIntervalMs: 200 },
        pacing: { mode: 'queue', syncIntervalMs: 200 },
      }),
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });

  it('views stay bounded and a re-sync reads a bounded number of keys', async () => {
    for (let i = 0; i < DISTINCT; i += 100)
      await Promise.all(
        Array.from({ length: 100 }, (_, j) =>
          h.openai
            .chat({ model: `m-${i + j}`, messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 })
            .catch(() => undefined),
        ),
      );
    const breakers = Object.keys((await h.app.get(OpenAIHealthService).check()).breakers);
    expect(breakers.length).toBeLessThanOrEqual(1_000);
    const store = h.app.get<OpenAIStore>(OPENAI_STORE);
    const reads: number[] = [];
    const get = store.get.bind(store);
    store.get = (key: string) => {
      reads.push(performance.now());
      return get(key);
    };
    await new Promise((r) => setTimeout(r, 650));
    store.get = get;
    // Reads come in bursts, one per re-sync (every 200 ms): each reads at most 1,000 views (the bound),
    // not one per model name ever seen (1,500).
    const bursts: number[] = [];
    reads.forEach((t, i) => {
      if (i === 0 || t - reads[i - 1] > 50) bursts.push(0);
      bursts[bursts.length - 1]++;
    });
    expect(bursts.length).toBeGreaterThanOrEqual(1);
    expect(Math.max(...bursts)).toBeLessThanOrEqual(1_000);
  });
});
