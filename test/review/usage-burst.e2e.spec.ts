import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageService, type ChatResult } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp } from '../support/fixture-app.js';
import { sharedRedisUrl, uniquePrefix } from '../support/redis.js';

const redisUrl = sharedRedisUrl();
const stores = redisUrl ? (['memory', 'redis'] as const) : (['memory'] as const);
const USERS = ['ua', 'ub', 'uc'];
const ROUTES = ['r1', 'r2'];
const MODELS = ['gpt-4o-mini', 'gpt-4o'];

/** The ledger's totals after a burst equal the sum of what the calls returned, per user/route/model/tier. */
describe.each(stores)('usage ledger after a burst (%s store)', (store) => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await fake.close();
  });

  it('600 concurrent calls over 3 users, 2 routes, 2 models, 2 tiers', async () => {
    const h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: { default: 'gpt-4o-mini', fallbacks: [] },
        usage: { flushIntervalMs: 5 },
        ...(store === 'redis'
          ? { storage: { type: 'redis', redis: { url: redisUrl, keyPrefix: uniquePrefix('review-usage') } } }
          : {}),
      }),
    );
    try {
      fake.reset();
      const jobs = Array.from({ length: 600 }, (_, i) => ({
        user: USERS[i % 3],
        route: ROUTES[i % 2],
        model: MODELS[Math.floor(i / 2) % 2],
        tier: i % 5 === 0 ? 'flex' : undefined,
      }));
      const results = await Promise.all(
        jobs.map(async (j, i) => ({
          j,
          r: (await h.openai.chat(
            {
              model: j.model,
              messages: [{ role: 'user', content: `hello ${'x '.repeat(i % 7)}` }],
              max_tokens: 30,
              ...(j.tier ? { service_tier: j.tier as 'flex' } : {}),
            },
            { user: j.user, route: j.route },
          )) as ChatResult,
        })),
      );
      expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(600);
      const usage = h.app.get(UsageService);
      await usage.flush();
      const project = await usage.totals(null);
      const sum = (xs: typeof results) => ({
        requests: xs.length,
        prompt: xs.reduce((n, x) => n + x.r.usage.prompt_tokens, 0),
        completion: xs.reduce((n, x) => n + x.r.usage.completion_tokens, 0),
        total: xs.reduce((n, x) => n + x.r.usage.total_tokens, 0),
        cost: xs.reduce((n, x) => n + (x.r.costUsd ?? 0), 0),
      });
      const all = sum(results);
      expect(project.requests).toBe(all.requests);
      expect(project.prompt_tokens).toBe(all.prompt);
      expect(project.completion_tokens).toBe(all.completion);
      expect(project.cost_usd).toBeCloseTo(all.cost, 9);
      for (const route of ROUTES)
        expect(project.by_route[route]?.total_tokens).toBe(
          sum(results.filter((x) => x.j.route === route)).total,
        );
      const models = [...new Set(results.map((x) => x.r.model))];
      expect(models).toHaveLength(2);
      for (const model of models)
        expect([model, project.by_model[model]?.requests]).toEqual([
          model,
          results.filter((x) => x.r.model === model).length,
        ]);
      const flexReqs = Object.entries(project.by_service_tier)
        .filter(([k]) => k === 'flex')
        .reduce((n, [, l]) => n + l.requests, 0);
      expect(flexReqs).toBe(results.filter((x) => x.j.tier === 'flex').length);
      for (const user of USERS) {
        const t = await usage.totals(user);
        const s = sum(results.filter((x) => x.j.user === user));
        expect([user, t.requests, t.prompt_tokens, t.completion_tokens]).toEqual([
          user,
          s.requests,
          s.prompt,
          s.completion,
        ]);
        expect(t.cost_usd).toBeCloseTo(s.cost, 9);
      }
    } finally {
      await h.close();
    }
  });
});
