import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BudgetService, OpenAIMetricsService, PricingService, UsageService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { metricValue } from '../support/prometheus.js';

const MODEL = 'gpt-4o-mini-2024-07-18';

describe('service tiers: passed through, read back, priced, labelled', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  let pricing: PricingService;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { budgets: { user: { dailyUsd: 10 } } }),
    );
    pricing = h.app.get(PricingService);
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => fake.reset());

  it('priority costs the Priority price, default the standard one; the tier the upstream reports is on the result', async () => {
    const std = await h.openai.chat({ messages: [{ role: 'user', content: 'tier test' }] }, { user: 't1' });
    const pri = await h.openai.chat(
      { messages: [{ role: 'user', content: 'tier test' }], service_tier: 'priority' },
      { user: 't1' },
    );
    expect(fake.requests.map((r) => r.body.service_tier)).toEqual([undefined, 'priority']);
    expect(std.serviceTier).toBe('default');
    expect(pri.serviceTier).toBe('priority');
    expect(std.costUsd).toBe(pricing.cost(MODEL, std.usage, 'standard'));
    expect(pri.costUsd).toBe(pricing.cost(MODEL, pri.usage, 'priority'));
    expect(pri.costUsd!).toBeGreaterThan(std.costUsd!);
  });

  it('flex on a Responses stream is priced at the Flex rate (half the standard) for a model that offers it', async () => {
    const stream = await h.openai.streamResponse({
      input: 'flex please',
      model: 'o4-mini',
      service_tier: 'flex',
    });
    for await (const _ of stream) void _;
    const s = await stream.finished;
    expect(s.serviceTier).toBe('flex');
    expect(s.costUsd).toBeCloseTo(pricing.cost('o4-mini', s.usage, 'standard')! / 2, 12);
  });

  it('usage and metrics are labelled by tier; a priority call reserves its budget at the Priority price', async () => {
    await h.openai.createResponse({ input: 'a', service_tier: 'priority' }, { user: 't2' });
    await h.openai.createResponse({ input: 'b' }, { user: 't2' });
    await h.openai.flush();
    const usage = await h.app.get(UsageService).totals('t2');
    expect(usage.by_service_tier.priority?.requests).toBe(1);
    expect(usage.by_service_tier.default?.requests).toBe(1);
    const text = await h.app.get(OpenAIMetricsService).metrics();
    expect(
      metricValue(text, 'openai_service_tier_calls_total', { service_tier: 'priority' }),
    ).toBeGreaterThanOrEqual(2);

    // While a priority call is in flight, the hold is the Priority max cost (dearer than the standard one).
    fake.fault({ path: '/v1/chat/completions', delayMs: 300, times: 1 });
    const budgets = h.app.get(BudgetService);
    const before = (await budgets.status('t3'))[0]!.spent_usd;
    const call = h.openai.chat(
      { messages: [{ role: 'user', content: 'hold' }], max_tokens: 1000, service_tier: 'priority' },
      { user: 't3' },
    );
    await new Promise((r) => setTimeout(r, 100));
    const held = (await budgets.status('t3'))[0]!.spent_usd - before;
    await call;
    const standardMax = pricing.maxCost(MODEL, 20, 1000, 'standard')!;
    expect(held).toBeGreaterThan(standardMax);
  });
});

describe('service tiers: odd replies and reservations for an unnamed tier', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        budgets: { user: { dailyUsd: 10 }, reserveTier: 'dearest' },
      }),
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });

  it('a service_tier that is not a string is ignored (standard price), and the process keeps serving', async () => {
    fake.fault({
      path: '/v1/responses',
      times: 1,
      replyBody: {
        id: 'resp_odd',
        object: 'response',
        created_at: 1,
        status: 'completed',
        model: MODEL,
        service_tier: { odd: 1 },
        output: [
          {
            type: 'message',
            id: 'm1',
            role: 'assistant',
            status: 'completed',
            content: [{ type: 'output_text', text: 'ok', annotations: [] }],
          },
        ],
        usage: { input_tokens: 5, output_tokens: 1, total_tokens: 6 },
      },
    });
    const r = await h.openai.createResponse({ input: 'hi' }, { user: 'odd' });
    expect(r.serviceTier).toBeUndefined();
    expect(r.costUsd).toBe(h.app.get(PricingService).cost(MODEL, r.usage));
    await h.openai.flush();
    await new Promise((resolve) => setImmediate(resolve));
    const usage = await h.app.get(UsageService).totals('odd');
    expect(usage.by_service_tier.default?.requests).toBe(1);
    // Still serving after the ledger's write.
    await expect(h.openai.createResponse({ input: 'again' }, { user: 'odd' })).resolves.toBeDefined();
  });

  it("budgets.reserveTier 'dearest': a call naming no tier is held at the Priority price", async () => {
    fake.fault({ path: '/v1/chat/completions', delayMs: 300, times: 1 });
    const budgets = h.app.get(BudgetService);
    const call = h.openai.chat(
      { messages: [{ role: 'user', content: 'hold' }], max_tokens: 1000 },
      { user: 'd1' },
    );
    await new Promise((r) => setTimeout(r, 100));
    const held = (await budgets.status('d1'))[0]!.spent_usd;
    await call;
    const pricing = h.app.get(PricingService);
    expect(held).toBeGreaterThan(pricing.maxCost(MODEL, 20, 1000, 'standard')!);
  });
});
