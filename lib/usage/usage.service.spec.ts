import { Logger } from '@nestjs/common';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { NormalizedUsage } from '../call/upstream-call.js';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import type { OpenAIModuleOptions } from '../options/openai-module-options.interface.js';
import { PricingService } from '../pricing/pricing.service.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { MemoryStore } from '../storage/memory.store.js';
import { ResilientStore } from '../storage/resilient.store.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import { UsageHook } from './usage.hook.js';
import { UsageService, periodKeys } from './usage.service.js';

const options = (extra: OpenAIModuleOptions = {}) =>
  resolveOpenAIOptions({ apiKey: 'sk-unit', environment: 'test', ...extra });

const u = (prompt: number, completion: number, extra: Partial<NormalizedUsage> = {}): NormalizedUsage => ({
  prompt_tokens: prompt,
  cached_tokens: 0,
  completion_tokens: completion,
  reasoning_tokens: 0,
  total_tokens: prompt + completion,
  estimated: false,
  ...extra,
});

const AT = new Date('2024-07-04T12:00:00Z');

afterEach(() => {
  vi.restoreAllMocks();
});

describe('periodKeys', () => {
  it('gives the UTC day and month', () => {
    expect(periodKeys(new Date('2024-12-31T23:59:59.999Z'))).toEqual({ day: '2024-12-31', month: '2024-12' });
    expect(periodKeys(new Date('2025-01-01T00:00:00.000Z'))).toEqual({ day: '2025-01-01', month: '2025-01' });
    expect(periodKeys(new Date('2024-02-29T10:00:00Z'))).toEqual({ day: '2024-02-29', month: '2024-02' });
  });
});

describe('UsageService', () => {
  it('sums calls per user and for the project, with breakdowns by model and by route', async () => {
    const usage = new UsageService(new MemoryStore(), options());
    usage.record(
      {
        user: 'alice',
        route: 'POST /chat',
        model: 'gpt-4o-mini-2024-07-18',
        usage: u(100, 20, { cached_tokens: 64, reasoning_tokens: 5 }),
        costUsd: 0.000027,
      },
      AT,
    );
    usage.record(
      {
        user: 'alice',
        route: 'POST /chat/stream',
        model: 'gpt-4o-mini-2024-07-18',
        usage: u(50, 10),
        costUsd: 0.0000135,
      },
      AT,
    );
    usage.record(
      { user: 'alice', route: 'POST /chat', model: 'gpt-4o-2024-08-06', usage: u(10, 10), costUsd: 0.000125 },
      AT,
    );
    usage.record(
      { user: 'bob', route: 'POST /chat', model: 'gpt-4o-2024-08-06', usage: u(1, 1), costUsd: 0.0000125 },
      AT,
    );
    await usage.flush();

    const alice = await usage.totals('alice', 'day', AT);
    expect(alice).toMatchObject({
      user: 'alice',
      period: 'day',
      period_key: '2024-07-04',
      requests: 3,
      prompt_tokens: 160,
      cached_tokens: 64,
      completion_tokens: 40,
      reasoning_tokens: 5,
      unpriced_requests: 0,
      estimated_requests: 0,
    });
    expect(alice.cost_usd).toBeCloseTo(0.0001655, 12);
    expect(alice.by_model).toEqual({
      'gpt-4o-mini-2024-07-18': { requests: 2, total_tokens: 180, cost_usd: 0.0000405, unpriced_requests: 0 },
      'gpt-4o-2024-08-06': { requests: 1, total_tokens: 20, cost_usd: 0.000125, unpriced_requests: 0 },
    });
    expect(alice.by_route).toEqual({
      'POST /chat': { requests: 2, total_tokens: 140, cost_usd: 0.000152, unpriced_requests: 0 },
      'POST /chat/stream': { requests: 1, total_tokens: 60, cost_usd: 0.0000135, unpriced_requests: 0 },
    });

    const project = await usage.totals(null, 'day', AT);
    expect(project).toMatchObject({ user: null, requests: 4, prompt_tokens: 161, completion_tokens: 41 });
    expect(project.by_model['gpt-4o-2024-08-06']).toMatchObject({
      requests: 2,
      total_tokens: 22,
      cost_usd: 0.0001375,
    });

    const month = await usage.totals('alice', 'month', AT);
    expect(month).toMatchObject({ period: 'month', period_key: '2024-07', requests: 3, prompt_tokens: 160 });
    expect(await usage.totals('carol', 'day', AT)).toMatchObject({
      requests: 0,
      cost_usd: 0,
      by_model: {},
      by_route: {},
    });
  });

  it('rounds summed costs to the nano-dollar (no float residue)', async () => {
    const usage = new UsageService(new MemoryStore(), options());
    for (let i = 0; i < 10; i++)
      usage.record({ user: 'u', route: 'r', model: 'm', usage: u(1, 1), costUsd: 0.1 }, AT);
    usage.record({ user: 'u', route: 'r', model: 'm', usage: u(1, 1), costUsd: 0.2 }, AT);
    await usage.flush();
    const t = await usage.totals('u', 'day', AT);
    expect(t.cost_usd).toBe(1.2);
    expect(t.by_model.m.cost_usd).toBe(1.2);
    expect(t.by_route.r.cost_usd).toBe(1.2);
  });

  it('keeps unpriced calls out of the cost and counts them: never a $0 cost for a model without a price', async () => {
    const usage = new UsageService(new MemoryStore(), options());
    usage.record({ user: 'u', route: 'POST /chat', model: 'acme-llm', usage: u(10, 10), costUsd: null }, AT);
    usage.record({ user: 'u', route: 'POST /chat', model: 'acme-llm', usage: u(10, 10), costUsd: null }, AT);
    usage.record(
      { user: 'u', route: 'POST /chat', model: 'gpt-4o-mini', usage: u(10, 10), costUsd: 0.0000075 },
      AT,
    );
    await usage.flush();
    const t = await usage.totals('u', 'day', AT);
    expect(t).toMatchObject({ requests: 3, unpriced_requests: 2, prompt_tokens: 30 });
    expect(t.cost_usd).toBeCloseTo(0.0000075, 12);
    expect(t.by_model['acme-llm']).toEqual({
      requests: 2,
      total_tokens: 40,
      cost_usd: null,
      unpriced_requests: 2,
    });
    expect(t.by_model['gpt-4o-mini']).toEqual({
      requests: 1,
      total_tokens: 20,
      cost_usd: 0.0000075,
      unpriced_requests: 0,
    });
    // a line mixing priced and unpriced calls: the priced cost, and how many calls it leaves out
    expect(t.by_route['POST /chat']).toEqual({
      requests: 3,
      total_tokens: 60,
      cost_usd: 0.0000075,
      unpriced_requests: 2,
    });
  });

  it('counts estimated usage (streams cut before their usage chunk) and free calls', async () => {
    const usage = new UsageService(new MemoryStore(), options());
    usage.record(
      { user: 'u', model: 'gpt-4o-mini', usage: u(10, 3, { estimated: true }), costUsd: 0.0000033 },
      AT,
    );
    usage.record({ user: 'u', model: 'omni-moderation-latest', usage: u(0, 0), costUsd: 0 }, AT);
    await usage.flush();
    const t = await usage.totals('u', 'day', AT);
    expect(t).toMatchObject({ requests: 2, estimated_requests: 1, unpriced_requests: 0 });
    expect(t.by_route).toEqual({
      none: { requests: 2, total_tokens: 13, cost_usd: 0.0000033, unpriced_requests: 0 },
    });
    expect(t.by_model['omni-moderation-latest']).toEqual({
      requests: 1,
      total_tokens: 0,
      cost_usd: 0,
      unpriced_requests: 0,
    });
  });

  it('records a call without a user for the project only', async () => {
    const usage = new UsageService(new MemoryStore(), options());
    usage.record({ model: 'gpt-4o-mini', usage: u(5, 5), costUsd: 0.000001 }, AT);
    await usage.flush();
    expect((await usage.totals(null, 'day', AT)).requests).toBe(1);
  });

  it('keeps separator characters of model and route names out of the field names', async () => {
    const usage = new UsageService(new MemoryStore(), options());
    usage.record(
      { user: 'u', route: 'GET /a|b', model: 'evil|model|cost_usd', usage: u(1, 1), costUsd: 0.5 },
      AT,
    );
    await usage.flush();
    const t = await usage.totals('u', 'day', AT);
    expect(t.by_model).toEqual({
      evil_model_cost_usd: { requests: 1, total_tokens: 2, cost_usd: 0.5, unpriced_requests: 0 },
    });
    expect(t.by_route).toEqual({
      'GET /a_b': { requests: 1, total_tokens: 2, cost_usd: 0.5, unpriced_requests: 0 },
    });
    expect(t.cost_usd).toBe(0.5);
  });

  it('ignores stored fields it does not know', async () => {
    const store = new MemoryStore();
    const usage = new UsageService(store, options());
    await store.incrementFields(
      '{u:u}:usage:2024-07-04',
      { requests: 2, 'm|x': 5, 'q|m|requests': 3, 'm|a|b|requests': 1, 'm|good|requests': 2 },
      60_000,
    );
    const t = await usage.totals('u', 'day', AT);
    expect(t.requests).toBe(2);
    expect(t.by_route).toEqual({});
    expect(Object.keys(t.by_model)).toEqual(['good']);
  });

  it('splits UTC days and months: December 31 and January 1 are different days, months and years', async () => {
    const usage = new UsageService(new MemoryStore(), options());
    const dec31 = new Date('2024-12-31T23:59:59.999Z');
    const jan1 = new Date('2025-01-01T00:00:00.000Z');
    usage.record({ user: 'u', model: 'm', usage: u(1, 0), costUsd: 0.000001 }, dec31);
    usage.record({ user: 'u', model: 'm', usage: u(2, 0), costUsd: 0.000002 }, jan1);
    usage.record(
      { user: 'u', model: 'm', usage: u(4, 0), costUsd: 0.000004 },
      new Date('2024-12-01T00:00:00Z'),
    );
    await usage.flush();
    expect((await usage.totals('u', 'day', dec31)).prompt_tokens).toBe(1);
    expect((await usage.totals('u', 'day', jan1)).prompt_tokens).toBe(2);
    expect((await usage.totals('u', 'month', dec31)).prompt_tokens).toBe(5);
    expect((await usage.totals('u', 'month', jan1)).prompt_tokens).toBe(2);
  });

  it('records nothing when usage is disabled', async () => {
    const usage = new UsageService(new MemoryStore(), options({ usage: { enabled: false } }));
    usage.record({ user: 'u', model: 'm', usage: u(1, 1), costUsd: 1 }, AT);
    await usage.flush();
    expect((await usage.totals('u', 'day', AT)).requests).toBe(0);
  });

  it('writes off the request path; flush() and totals() wait for the writes; a failed write is logged, not thrown', async () => {
    const error = vi.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    const memory = new MemoryStore();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let failNext = true;
    const slow: OpenAIStore = Object.assign(Object.create(memory) as OpenAIStore, {
      async incrementFields(key: string, fields: Record<string, number>, ttl: number) {
        await gate;
        if (key.startsWith('{u:') && failNext) {
          failNext = false;
          throw new Error('store down');
        }
        return memory.incrementFields(key, fields, ttl);
      },
    });
    const usage = new UsageService(slow, options());
    // record() returns at once: nothing is written until the buffer drains after this turn.
    usage.record({ user: 'u', model: 'm', usage: u(1, 1), costUsd: 0.1 }, AT);
    expect((await memory.getFields('usage:project:2024-07-04')).requests ?? 0).toBe(0);
    let flushed = false;
    const f = usage.flush().then(() => (flushed = true));
    // totals() reads this instance's own writes: it waits for them too.
    let read: number | undefined;
    const t = usage.totals(null, 'day', AT).then((r) => (read = r.requests));
    await new Promise((r) => setTimeout(r, 5));
    expect(flushed).toBe(false);
    expect(read).toBeUndefined();
    release();
    await f;
    await t;
    expect(read).toBe(1);
    expect(error.mock.calls.map((c) => String(c[0])).join('\n')).toContain('store down');
  });
});

describe('UsageHook', () => {
  it('records the settled call with the cost the service computed, and prices it only when none was given', async () => {
    const opts = options();
    const pricing = new PricingService(opts);
    const heard: string[] = [];
    pricing.unpricedListeners.push((m) => heard.push(m));
    vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    const usage = new UsageService(new MemoryStore(), opts);
    const hook = new UsageHook(usage, pricing);
    const call = {
      endpoint: 'chat.completions' as const,
      model: 'gpt-4o-mini',
      stream: false,
      user: 'u',
      route: 'POST /chat',
      promptTokens: 1,
      maxOutputTokens: 1,
      candidates: ['gpt-4o-mini'],
    };
    await hook
      .reserve(call)
      .settle({ model: 'gpt-4o-mini', usage: u(1000, 0), attempts: 1, latencyMs: 1, costUsd: 0.5 });
    await hook.reserve(call).settle({ model: 'gpt-4o-mini', usage: u(1000, 0), attempts: 1, latencyMs: 1 });
    // already known to be unpriced (null): not priced, nor reported, a second time
    await hook
      .reserve({ ...call, model: 'acme' })
      .settle({ model: 'acme', usage: u(1, 1), attempts: 1, latencyMs: 1, costUsd: null });
    await hook.reserve(call).release();
    await usage.flush();
    const t = await usage.totals('u', 'day');
    expect(t.requests).toBe(3);
    expect(t.cost_usd).toBeCloseTo(0.5 + 0.00015, 12);
    expect(t.unpriced_requests).toBe(1);
    expect(heard).toEqual([]);
  });
});

describe('UsageService when the store fails', () => {
  /** A memory store that fails while `down`; `applyThenFail` applies a write and then throws (a timeout whose command ran). */
  function flaky() {
    const memory = new MemoryStore();
    const state = { down: false, applyThenFail: 0, writes: 0 };
    const store: OpenAIStore = Object.assign(Object.create(memory) as OpenAIStore, {
      async incrementFields(key: string, fields: Record<string, number>, ttl: number) {
        if (state.down) throw new Error('Connection is closed.');
        state.writes++;
        await memory.incrementFields(key, fields, ttl);
        if (state.applyThenFail > 0) {
          state.applyThenFail--;
          throw new Error('Command timed out');
        }
      },
      async getFields(key: string) {
        if (state.down) throw new Error('Connection is closed.');
        return memory.getFields(key);
      },
    });
    return { memory, store, state };
  }
  const rec = (usage: UsageService, n: number, user = 'u') => {
    for (let i = 0; i < n; i++)
      usage.record({ user, route: 'r', model: 'm', usage: u(10, 1), costUsd: 0.001 }, AT);
  };

  it('keeps the records while the store is down and writes them once when it is back, on the timer', async () => {
    const error = vi.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    vi.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    const { store, state } = flaky();
    const usage = new UsageService(store, options({ usage: { flushIntervalMs: 20 } }));
    state.down = true;
    rec(usage, 3);
    await usage.flush();
    expect(usage.pendingRecords).toBe(3);
    rec(usage, 2);
    expect(usage.pendingRecords).toBe(5);
    expect(error.mock.calls.map((c) => String(c[0])).join('\n')).toMatch(
      /recording usage failed: Connection is closed\.; 3 records kept/,
    );
    state.down = false;
    // no flush(): the retry timer writes them
    await vi.waitFor(() => expect(usage.pendingRecords).toBe(0), { timeout: 2_000 });
    const t = await usage.totals('u', 'day', AT);
    expect(t).toMatchObject({ requests: 5, prompt_tokens: 50, completion_tokens: 5 });
    expect(t.cost_usd).toBe(0.005);
    expect((await usage.totals(null, 'month', AT)).requests).toBe(5);
    usage.onApplicationShutdown();
  });

  it('a write applied whose reply was lost (a timeout) is not counted twice; one never applied is sent again', async () => {
    vi.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    vi.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    const { store, state } = flaky();
    const usage = new UsageService(store, options());
    rec(usage, 1);
    await usage.flush(); // a first write, so the counters are known
    rec(usage, 2);
    state.applyThenFail = 4; // every key of the batch is applied, and every reply lost
    await usage.flush();
    expect(usage.pendingRecords).toBe(2);
    await usage.flush(); // reads the counters back: already applied, nothing sent
    expect(usage.pendingRecords).toBe(0);
    expect(state.writes).toBe(8);
    expect((await usage.totals('u', 'day', AT)).requests).toBe(3);
    expect((await usage.totals(null, 'day', AT)).requests).toBe(3);
    // the same on a key written for the first time by this instance
    rec(usage, 1, 'newcomer');
    state.applyThenFail = 4;
    await usage.flush();
    await usage.flush();
    expect((await usage.totals('newcomer', 'month', AT)).requests).toBe(1);
    expect((await usage.totals(null, 'month', AT)).requests).toBe(4);
    // and a batch that never reached the store is sent again
    rec(usage, 1, 'newcomer');
    state.down = true;
    await usage.flush();
    state.down = false;
    await usage.flush();
    expect((await usage.totals('newcomer', 'day', AT)).requests).toBe(2);
    expect((await usage.totals(null, 'day', AT)).requests).toBe(5);
  });

  it('drops the oldest batch past usage.maxPendingRecords, with an error log and a metric', async () => {
    const error = vi.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    vi.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    const { store, state } = flaky();
    const opts = options({ usage: { maxPendingRecords: 5, flushIntervalMs: 60_000 } });
    const metrics = new OpenAIMetricsService(opts);
    const usage = new UsageService(store, opts, metrics);
    state.down = true;
    rec(usage, 4, 'old');
    await usage.flush(); // the 4 fail: kept as the oldest batch
    rec(usage, 1, 'new');
    expect(usage.pendingRecords).toBe(5);
    rec(usage, 1, 'new'); // 6 > 5: the batch of 4 goes
    expect(usage.pendingRecords).toBe(2);
    expect(error.mock.calls.map((c) => String(c[0])).join('\n')).toContain(
      '4 records dropped unwritten (the oldest): more than usage.maxPendingRecords (5)',
    );
    const text = await metrics.metrics();
    expect(text).toMatch(/openai_usage_records_dropped_total 4/);
    expect(text).toMatch(/openai_usage_records_pending 2/);
    state.down = false;
    await usage.flush();
    expect((await usage.totals('old', 'day', AT)).requests).toBe(0);
    expect((await usage.totals('new', 'day', AT)).requests).toBe(2);
    expect((await usage.totals(null, 'day', AT)).requests).toBe(2);
    expect(await metrics.metrics()).toMatch(/openai_usage_records_pending 0/);
    usage.onApplicationShutdown();
  });

  it('writes once per interval, one write per key whatever the number of calls', async () => {
    const { store, state, memory } = flaky();
    const usage = new UsageService(store, options({ usage: { flushIntervalMs: 50 } }));
    rec(usage, 100);
    await new Promise((r) => setTimeout(r, 10));
    expect((await memory.getFields('usage:project:2024-07-04')).requests ?? 0).toBe(0);
    await vi.waitFor(() => expect(usage.pendingRecords).toBe(0), { timeout: 2_000 });
    expect(state.writes).toBe(4); // user and project, day and month
    expect((await memory.getFields('usage:project:2024-07-04')).requests).toBe(100);
    usage.onApplicationShutdown();
  });

  it('writes to the primary store behind the failure policy, so a write Redis refused is kept, not put in the fallback', async () => {
    vi.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    vi.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    const { store, state } = flaky();
    const resilient = new ResilientStore(store, 'memory', 1);
    const usage = new UsageService(resilient, options());
    state.down = true;
    rec(usage, 2);
    await usage.flush();
    expect(usage.pendingRecords).toBe(2);
    state.down = false;
    await usage.flush();
    expect((await usage.totals('u', 'day', AT)).requests).toBe(2);
  });
});
