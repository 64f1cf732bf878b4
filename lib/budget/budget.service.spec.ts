import { Logger } from '@nestjs/common';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { NormalizedUsage, UpstreamCall } from '../call/upstream-call.js';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import type { OpenAIModuleOptions } from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { PricingService } from '../pricing/pricing.service.js';
import { MemoryStore } from '../storage/memory.store.js';
import type { BudgetAlertEvent } from './budget-alert.event.js';
import { BudgetExceededException, UnpricedModelException } from './budget.exceptions.js';
import { BudgetService, budgetWindows } from './budget.service.js';

const DAY = 86_400_000;
const utc = (iso: string) => new Date(iso);

describe('budgetWindows', () => {
  it('gives the UTC day of `now` in micro-USD', () => {
    const [day] = budgetWindows({ dailyUsd: 1.5 }, utc('2024-03-15T13:45:10.123Z'));
    expect(day).toEqual({ name: 'day', limit: 1_500_000, windowMs: DAY, startAt: Date.UTC(2024, 2, 15) });
  });

  it('gives no window for a limit that is not set, day before month when both are', () => {
    expect(budgetWindows({}, utc('2024-03-15T00:00:00Z'))).toEqual([]);
    expect(budgetWindows({ monthlyUsd: 2 }, utc('2024-03-15T00:00:00Z')).map((w) => w.name)).toEqual([
      'month',
    ]);
    expect(
      budgetWindows({ dailyUsd: 1, monthlyUsd: 2 }, utc('2024-03-15T00:00:00Z')).map((w) => w.name),
    ).toEqual(['day', 'month']);
  });

  it('rounds the limit to whole micro-USD (no float residue)', () => {
    expect(budgetWindows({ dailyUsd: 0.1 + 0.2 }, utc('2024-03-15T00:00:00Z'))[0].limit).toBe(300_000);
    expect(budgetWindows({ dailyUsd: 0.000001 }, utc('2024-03-15T00:00:00Z'))[0].limit).toBe(1);
  });

  it('changes day exactly at UTC midnight', () => {
    const before = budgetWindows({ dailyUsd: 1 }, utc('2024-03-15T23:59:59.999Z'))[0];
    const after = budgetWindows({ dailyUsd: 1 }, utc('2024-03-16T00:00:00.000Z'))[0];
    expect(before.startAt).toBe(Date.UTC(2024, 2, 15));
    expect(after.startAt).toBe(Date.UTC(2024, 2, 16));
    expect(before.startAt! + before.windowMs).toBe(after.startAt);
  });

  it('rolls December over into January of the next year (day and month)', () => {
    const [day, month] = budgetWindows({ dailyUsd: 1, monthlyUsd: 10 }, utc('2024-12-31T23:59:59.999Z'));
    expect(day.startAt).toBe(Date.UTC(2024, 11, 31));
    expect(month.startAt).toBe(Date.UTC(2024, 11, 1));
    expect(month.windowMs).toBe(31 * DAY);
    expect(new Date(month.startAt! + month.windowMs).toISOString()).toBe('2025-01-01T00:00:00.000Z');
    expect(new Date(day.startAt! + day.windowMs).toISOString()).toBe('2025-01-01T00:00:00.000Z');
    const [day2, month2] = budgetWindows({ dailyUsd: 1, monthlyUsd: 10 }, utc('2025-01-01T00:00:00.000Z'));
    expect(day2.startAt).toBe(Date.UTC(2025, 0, 1));
    expect(month2.startAt).toBe(Date.UTC(2025, 0, 1));
    expect(month2.windowMs).toBe(31 * DAY);
  });

  it.each([
    ['2024-02-10T12:00:00Z', 29, '2024-03-01'], // leap year
    ['2023-02-28T23:59:59.999Z', 28, '2023-03-01'],
    ['2000-02-29T00:00:00Z', 29, '2000-03-01'], // divisible by 400: leap
    ['2100-02-01T00:00:00Z', 28, '2100-03-01'], // divisible by 100 only: not leap
    ['2024-04-30T23:59:59.999Z', 30, '2024-05-01'],
  ])('a month containing %s lasts %i days and ends on %s', (at, days, end) => {
    const [month] = budgetWindows({ monthlyUsd: 1 }, utc(at));
    expect(month.windowMs).toBe(days * DAY);
    expect(new Date(month.startAt! + month.windowMs).toISOString().slice(0, 10)).toBe(end);
  });

  it('counts Feb 29 of a leap year as its own day', () => {
    const [day] = budgetWindows({ dailyUsd: 1 }, utc('2024-02-29T12:00:00Z'));
    expect(new Date(day.startAt!).toISOString()).toBe('2024-02-29T00:00:00.000Z');
    expect(new Date(day.startAt! + day.windowMs).toISOString()).toBe('2024-03-01T00:00:00.000Z');
  });
});

// ---- BudgetService on the memory store -------------------------------------------------------------

const MODEL = 'unit-model-2025-01-01';
const DEAR = 'dear-model-2025-01-01';

function setup(extra: OpenAIModuleOptions = {}) {
  const options = resolveOpenAIOptions({
    apiKey: 'sk-unit',
    environment: 'test',
    ...extra,
    // 1 USD per 1M tokens: a call's cost in micro-USD is its token count, exactly.
    pricing: {
      models: {
        [MODEL]: { input: 1, output: 1 },
        [DEAR]: { input: 10, output: 10 },
        ...extra.pricing?.models,
      },
    },
  });
  const store = new MemoryStore();
  const pricing = new PricingService(options);
  const metrics = new OpenAIMetricsService(options);
  const budgets = new BudgetService(store, options, pricing, metrics);
  return { options, store, pricing, metrics, budgets };
}

const call = (
  user: string | undefined,
  promptTokens: number,
  maxOutputTokens: number,
  candidates = [MODEL],
): UpstreamCall => ({
  endpoint: 'chat.completions',
  model: candidates[0],
  stream: false,
  user,
  promptTokens,
  maxOutputTokens,
  candidates,
});

const used = (prompt: number, completion: number, cached = 0): NormalizedUsage => ({
  prompt_tokens: prompt,
  cached_tokens: cached,
  completion_tokens: completion,
  reasoning_tokens: 0,
  total_tokens: prompt + completion,
  estimated: false,
});

const settled = (pricing: PricingService, u: NormalizedUsage, model = MODEL) => ({
  model,
  usage: u,
  attempts: 1,
  latencyMs: 1,
  costUsd: pricing.cost(model, u),
});

const spentMicro = async (budgets: BudgetService, user: string | null, period: 'day' | 'month' = 'day') =>
  Math.round((await budgets.status(user)).find((s) => s.period === period)!.spent_usd * 1e6);

describe('BudgetService', () => {
  beforeEach(() => {
    vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  it('does nothing without a budget', async () => {
    const { budgets } = setup();
    expect(await budgets.reserve(call('u', 10, 10))).toBeUndefined();
    expect(await budgets.status('u')).toEqual([]);
    expect(await budgets.status(null)).toEqual([]);
  });

  it('holds the highest possible cost, then settles to the real cost', async () => {
    const { budgets, pricing } = setup({ budgets: { user: { dailyUsd: 1 } } });
    const r = (await budgets.reserve(call('u', 40, 200)))!;
    expect(await spentMicro(budgets, 'u')).toBe(240);
    await r.settle(settled(pricing, used(40, 17)));
    expect(await spentMicro(budgets, 'u')).toBe(57);
    // settle and release are one-shot
    await r.settle(settled(pricing, used(40, 17)));
    await r.release();
    expect(await spentMicro(budgets, 'u')).toBe(57);
  });

  it('reserves at the dearest candidate (fallback) model, settles at the model that answered', async () => {
    const { budgets, pricing } = setup({ budgets: { user: { dailyUsd: 1 } } });
    const r = (await budgets.reserve(call('u', 10, 90, [MODEL, DEAR])))!;
    expect(await spentMicro(budgets, 'u')).toBe(1000);
    await r.settle(settled(pricing, used(10, 5), DEAR));
    expect(await spentMicro(budgets, 'u')).toBe(150);
  });

  it('releases the whole hold', async () => {
    const { budgets } = setup({ budgets: { user: { dailyUsd: 1 } } });
    const r = (await budgets.reserve(call('u', 10, 90)))!;
    await r.release();
    expect(await spentMicro(budgets, 'u')).toBe(0);
  });

  // Each call's cost is rounded UP to the next micro-USD, and only that: a cost that is a whole number
  // of micro-USD must not be charged one more because of float noise (123 / 1e6 * 1e6 = 123.00000000000001).
  it.each([
    [23, 100, 123],
    [24, 100, 124],
    [146, 100, 246],
    [153, 100, 253],
    [392, 100, 492],
  ])(
    'charges a call of %i + %i tokens at 1 USD per 1M exactly %i micro-USD (held and settled)',
    async (prompt, output, micro) => {
      const { budgets, pricing } = setup({ budgets: { user: { dailyUsd: 1 } } });
      const r = (await budgets.reserve(call('u', prompt, output)))!;
      expect(await spentMicro(budgets, 'u')).toBe(micro);
      await r.settle(settled(pricing, used(prompt, output)));
      expect(await spentMicro(budgets, 'u')).toBe(micro);
    },
  );

  it('rounds a fractional cost up to the next micro-USD', async () => {
    const { budgets, pricing } = setup({ budgets: { user: { dailyUsd: 1 } } });
    // gpt-4o-mini: 0.15 / 0.6 USD per 1M: 7 prompt + 3 completion tokens = 2.85 micro-USD
    const r = (await budgets.reserve({
      ...call('u', 7, 3),
      model: 'gpt-4o-mini-2024-07-18',
      candidates: ['gpt-4o-mini-2024-07-18'],
    }))!;
    expect(await spentMicro(budgets, 'u')).toBe(3);
    await r.settle(settled(pricing, used(7, 3), 'gpt-4o-mini-2024-07-18'));
    expect(await spentMicro(budgets, 'u')).toBe(3);
  });

  it('refuses a call that does not fit with 429 budget_exceeded, resets_at the next UTC midnight, retry-after', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(utc('2024-06-10T22:00:00.000Z'));
    const { budgets, metrics } = setup({ budgets: { user: { dailyUsd: 0.0001 } } });
    const r = (await budgets.reserve(call('u', 50, 40)))!;
    await r.settle({ model: MODEL, usage: used(50, 40), attempts: 1, latencyMs: 1, costUsd: 90e-6 });
    const err = await Promise.resolve(budgets.reserve(call('u', 5, 6))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BudgetExceededException);
    const ex = err as BudgetExceededException;
    expect(ex.getStatus()).toBe(429);
    expect(ex.body).toMatchObject({
      error: 'budget_exceeded',
      scope: 'user',
      period: 'day',
      limit_usd: 0.0001,
      resets_at: '2024-06-11T00:00:00.000Z',
      retry_after: 7200,
    });
    expect(ex.headers['retry-after']).toBe('7200');
    // a refused call holds nothing
    expect(await spentMicro(budgets, 'u')).toBe(90);
    expect(await budgets.reserve(call('u', 5, 5))).toBeDefined();
    expect(await metrics.metrics()).toContain('openai_budget_rejections_total{scope="user",period="day"} 1');
  });

  it('applies the project budget across users, and a refused call holds nothing in the user budget either', async () => {
    const { budgets } = setup({ budgets: { user: { dailyUsd: 1 }, project: { dailyUsd: 0.0003 } } });
    await budgets.reserve(call('a', 50, 50));
    await budgets.reserve(call('b', 50, 50));
    await budgets.reserve(call('c', 50, 50));
    const err = await Promise.resolve(budgets.reserve(call('d', 1, 1))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BudgetExceededException);
    expect((err as BudgetExceededException).body).toMatchObject({ scope: 'project' });
    expect(await spentMicro(budgets, null)).toBe(300);
    expect(await spentMicro(budgets, 'd')).toBe(0);
    // without a user, only the project budget applies
    await expect(Promise.resolve(budgets.reserve(call(undefined, 1, 1)))).rejects.toBeInstanceOf(
      BudgetExceededException,
    );
  });

  it("rejects an unpriced model with 400 model_unpriced while a budget applies ('reject'), lets it through uncounted ('allow')", async () => {
    const { budgets } = setup({ budgets: { user: { dailyUsd: 1 } } });
    const err = await Promise.resolve(budgets.reserve(call('u', 10, 10, ['acme-llm']))).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UnpricedModelException);
    expect((err as UnpricedModelException).getStatus()).toBe(400);
    expect((err as UnpricedModelException).body.error).toBe('model_unpriced');
    // a priced model whose fallback is unpriced cannot be bounded either
    await expect(
      Promise.resolve(budgets.reserve(call('u', 10, 10, [MODEL, 'acme-llm']))),
    ).rejects.toBeInstanceOf(UnpricedModelException);
    expect(await spentMicro(budgets, 'u')).toBe(0);

    const allow = setup({ budgets: { user: { dailyUsd: 1 }, unpricedModels: 'allow' } });
    const r = await allow.budgets.reserve(call('u', 10, 10, ['acme-llm']));
    await r?.settle({ model: 'acme-llm', usage: used(10, 10), attempts: 1, latencyMs: 1, costUsd: null });
    expect(await spentMicro(allow.budgets, 'u')).toBe(0);
  });

  it('skips moderation calls', async () => {
    const { budgets } = setup({ budgets: { user: { dailyUsd: 0.000001 } } });
    expect(
      await budgets.reserve({
        ...call('u', 10_000, 0),
        endpoint: 'moderations',
        model: 'omni-moderation-latest',
        candidates: ['omni-moderation-latest'],
      }),
    ).toBeUndefined();
  });

  it('uses userLimits over the per-user default', async () => {
    const { budgets } = setup({
      budgets: {
        user: { dailyUsd: 1 },
        userLimits: (u) => (u === 'vip' ? { dailyUsd: 5, monthlyUsd: 50 } : undefined),
      },
    });
    expect((await budgets.status('vip')).map((s) => [s.period, s.limit_usd])).toEqual([
      ['day', 5],
      ['month', 50],
    ]);
    expect((await budgets.status('joe')).map((s) => [s.period, s.limit_usd])).toEqual([['day', 1]]);
  });
});

describe('BudgetService alerts', () => {
  beforeEach(() => {
    vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    vi.useFakeTimers({ toFake: ['Date'] });
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  async function spend(
    budgets: BudgetService,
    pricing: PricingService,
    user: string,
    prompt: number,
    completion: number,
  ) {
    const r = (await budgets.reserve(call(user, prompt, completion)))!;
    await r.settle(settled(pricing, used(prompt, completion)));
    await budgets.flush();
  }

  it('fires each threshold once per period and subject, through onAlert and alerts$, in order', async () => {
    vi.setSystemTime(utc('2024-06-10T10:00:00Z'));
    const viaOption: BudgetAlertEvent[] = [];
    const { budgets, pricing } = setup({
      budgets: {
        user: { dailyUsd: 0.0001 },
        alertThresholds: [1, 0.5, 0.8],
        onAlert: (e) => void viaOption.push(e),
      },
    });
    const viaStream: BudgetAlertEvent[] = [];
    const sub = budgets.alerts$.subscribe((e) => viaStream.push(e));
    await spend(budgets, pricing, 'u', 20, 20); // 40
    expect(viaOption).toEqual([]);
    await spend(budgets, pricing, 'u', 5, 5); // 50: 0.5
    await spend(budgets, pricing, 'u', 5, 5); // 60: nothing new
    sub.unsubscribe();
    expect(viaOption.map((e) => e.threshold)).toEqual([0.5]);
    expect(viaStream).toEqual(viaOption);
    expect(viaOption[0]).toMatchObject({
      scope: 'user',
      user: 'u',
      period: 'day',
      threshold: 0.5,
      limitUsd: 0.0001,
      periodStart: '2024-06-10T00:00:00.000Z',
    });
    expect(viaOption[0].spentUsd).toBeCloseTo(0.00005, 12);
  });

  it('fires 0.8 and 1 as the spend reaches them, each once', async () => {
    vi.setSystemTime(utc('2024-06-10T10:00:00Z'));
    const events: BudgetAlertEvent[] = [];
    const { budgets, pricing } = setup({
      budgets: { user: { dailyUsd: 0.0001 }, onAlert: (e) => void events.push(e) },
    });
    await spend(budgets, pricing, 'u', 40, 40); // 80: 0.5 and 0.8 at once
    await spend(budgets, pricing, 'u', 10, 10); // 100: 1
    await expect(Promise.resolve(budgets.reserve(call('u', 1, 0)))).rejects.toBeInstanceOf(
      BudgetExceededException,
    );
    await budgets.flush();
    expect(events.map((e) => e.threshold)).toEqual([0.5, 0.8, 1]);
  });

  it('fires again in the next UTC day and month, not before (January 31 -> February 1)', async () => {
    const events: BudgetAlertEvent[] = [];
    const { budgets, pricing } = setup({
      budgets: { user: { dailyUsd: 0.0001, monthlyUsd: 0.0004 }, onAlert: (e) => void events.push(e) },
    });
    vi.setSystemTime(utc('2024-01-31T23:00:00Z'));
    await spend(budgets, pricing, 'u', 30, 30); // day 60 (0.5), month 60
    vi.setSystemTime(utc('2024-01-31T23:59:59.999Z'));
    await expect(Promise.resolve(budgets.reserve(call('u', 30, 30)))).rejects.toMatchObject({
      body: { resets_at: '2024-02-01T00:00:00.000Z' },
    });
    await spend(budgets, pricing, 'u', 10, 10); // day 80 (0.8), month 80
    vi.setSystemTime(utc('2024-02-01T00:00:00.000Z'));
    await spend(budgets, pricing, 'u', 30, 30); // new day 60 (0.5 again), new month 60
    expect(await spentMicro(budgets, 'u', 'month')).toBe(60);
    expect(events.map((e) => [e.period, e.threshold, e.periodStart])).toEqual([
      ['day', 0.5, '2024-01-31T00:00:00.000Z'],
      ['day', 0.8, '2024-01-31T00:00:00.000Z'],
      ['day', 0.5, '2024-02-01T00:00:00.000Z'],
    ]);
  });

  it('keeps subjects apart: users, and the project', async () => {
    vi.setSystemTime(utc('2024-06-10T10:00:00Z'));
    const events: BudgetAlertEvent[] = [];
    const { budgets, pricing } = setup({
      budgets: {
        user: { dailyUsd: 0.0001 },
        project: { monthlyUsd: 0.0002 },
        onAlert: (e) => void events.push(e),
      },
    });
    await spend(budgets, pricing, 'a', 25, 25); // a 50: a/day 0.5
    await spend(budgets, pricing, 'b', 25, 25); // b 50: b/day 0.5; project 100: project/month 0.5
    await spend(budgets, pricing, 'a', 5, 5); // nothing new
    expect(events.map((e) => `${e.scope}:${e.user ?? '-'}:${e.period}:${e.threshold}`).sort()).toEqual([
      'project:-:month:0.5',
      'user:a:day:0.5',
      'user:b:day:0.5',
    ]);
  });

  it('an alert listener that throws does not break the call', async () => {
    vi.setSystemTime(utc('2024-06-10T10:00:00Z'));
    const error = vi.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    const { budgets, pricing } = setup({
      budgets: {
        user: { dailyUsd: 0.0001 },
        onAlert: () => {
          throw new Error('pager down');
        },
      },
    });
    await spend(budgets, pricing, 'u', 50, 50);
    expect(error.mock.calls.map((c) => String(c[0])).join('\n')).toContain('pager down');
  });
});
