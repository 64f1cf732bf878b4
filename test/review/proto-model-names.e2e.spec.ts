import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BudgetService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';

/** Model names that are also Object.prototype members, sent by a caller (`models.requested: 'any'`). */
describe('model names named like Object.prototype members', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: { default: 'gpt-4o-mini', requested: 'any', pinning: 'off', fallbacks: [] },
        identity: { resolve: () => 'proto-user' },
        budgets: { user: { dailyUsd: 1 }, unpricedModels: 'reject' },
      }),
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });

  for (const model of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf'])
    it(`"${model}": refused as an unpriced model (422/400), never a 500, nothing spent`, async () => {
      const r = await request(h.server)
        .post('/chat')
        .send({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 });
      expect([model, r.status < 500]).toEqual([model, true]);
      expect(r.status).not.toBe(200);
      await h.app.get(BudgetService).flush();
      const [day] = await h.app.get(BudgetService).status('proto-user');
      expect(Number.isFinite(day.spent_usd)).toBe(true);
      expect(day.spent_usd).toBe(0);
    });
});
