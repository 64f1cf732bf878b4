import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DEFAULT_PRICES, UsageService } from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens, countTextTokens } from '../../lib/testing/index.js';
import { sseEvents, sseText } from '../support/fixture-app.js';
import { PLATFORMS, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';
import { metricValue } from '../support/prometheus.js';

const MINI = DEFAULT_PRICES['gpt-4o-mini'];
const REASONING = 3;
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'];
const bearer = (user: string) => ({ authorization: `Bearer ${user}-token` });

/** Cost of a gpt-4o-mini call by hand, from the shipped price table (USD per 1M tokens). */
const miniCost = (prompt: number, cached: number, completion: number) =>
  ((prompt - cached) * MINI.input + cached * (MINI.cachedInput ?? MINI.input) + completion * MINI.output) /
  1e6;

describe.each(PLATFORMS)('usage and cost in the sample app on %s (memory store)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  let cachedNow = 0;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ reasoningTokens: REASONING, cachedTokens: () => cachedNow });
    h = await startSampleApp(platform, fake, {
      SAMPLE_USERS: USERS.map((u) => `${u}:${u}-token`).join(','),
      RATE_LIMIT_RPM: '1000',
      MODERATION: 'off',
      OPENAI_MAX_RETRIES: '0',
    });
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
    cachedNow = 0;
    h.logger.lines.length = 0;
  });

  const usage = async (user: string) => {
    const res = await request(h.server).get('/usage').set(bearer(user));
    expect(res.status).toBe(200);
    return res.body;
  };

  it('totals equal the sums of the usage the upstream reported, and the per-response costs', async () => {
    const prompts = [
      'Say hello',
      'What is the capital of France? Answer in one word.',
      'one two three four five six',
      'x',
    ];
    const bodies = [];
    for (const [i, p] of prompts.entries()) {
      const res = await request(h.server)
        .post('/chat')
        .set(bearer('alice'))
        .send({ ...userMessage(p), max_tokens: 50 + i });
      expect(res.status).toBe(200);
      bodies.push(res.body);
    }
    // A streamed call counts the same way, from its usage event.
    const streamed = await request(h.server)
      .post('/chat/stream')
      .set(bearer('alice'))
      .send(userMessage('stream this please'))
      .buffer(true)
      .parse(sseText);
    const summary = JSON.parse(sseEvents(streamed.body as string).at(-2)!);
    expect(summary.usage).toBeDefined();

    // What the upstream reported, computed independently of the app: the fake's token counts.
    const upstream = fake.requestsTo('/v1/chat/completions');
    expect(upstream).toHaveLength(5);
    const expectedPrompt = upstream.reduce((n, r) => n + countChatPromptTokens(r.body.messages), 0);
    const expectedCompletion = [...prompts, 'stream this please'].reduce(
      (n, p) => n + countTextTokens(`Echo: ${p}`) + REASONING,
      0,
    );
    const reported = [...bodies.map((b) => b.usage), summary.usage];
    expect(reported.reduce((n, u) => n + u.prompt_tokens, 0)).toBe(expectedPrompt);
    expect(reported.reduce((n, u) => n + u.completion_tokens, 0)).toBe(expectedCompletion);

    const u = await usage('alice');
    expect(u).toMatchObject({
      user: 'alice',
      requests: 5,
      prompt_tokens: expectedPrompt,
      completion_tokens: expectedCompletion,
      cached_tokens: 0,
    });
    expect(u.reasoning_tokens).toBe(5 * REASONING);
    const costs = [...bodies.map((b) => b.cost_usd), summary.cost_usd] as number[];
    for (const [i, r] of reported.entries())
      expect(costs[i]).toBeCloseTo(miniCost(r.prompt_tokens, 0, r.completion_tokens), 12);
    expect(u.cost_usd).toBeCloseTo(
      costs.reduce((a, b) => a + b, 0),
      9,
    );
    expect(u.by_model).toEqual({
      'gpt-4o-mini-2024-07-18': {
        requests: 5,
        total_tokens: expectedPrompt + expectedCompletion,
        cost_usd: u.cost_usd,
        unpriced_requests: 0,
      },
    });

    // another user's totals are apart
    expect(await usage('frank')).toMatchObject({ requests: 0, prompt_tokens: 0, cost_usd: 0 });
  });

  it('prices cached prompt tokens at the cached-input rate (hand computation from DEFAULT_PRICES)', async () => {
    const body = {
      ...userMessage('Please repeat this sentence that is long enough to be cached in part.'),
      max_tokens: 40,
    };
    const uncached = await request(h.server).post('/chat').set(bearer('bob')).send(body);
    cachedNow = 8;
    const cached = await request(h.server).post('/chat').set(bearer('bob')).send(body);
    expect(uncached.status).toBe(200);
    expect(cached.status).toBe(200);
    const { prompt_tokens: p, completion_tokens: c } = cached.body.usage;
    expect(p).toBeGreaterThan(8);
    expect(cached.body.usage).toEqual(uncached.body.usage);
    expect(uncached.body.cost_usd).toBeCloseTo(miniCost(p, 0, c), 12);
    expect(cached.body.cost_usd).toBeCloseTo(miniCost(p, 8, c), 12);
    expect(uncached.body.cost_usd - cached.body.cost_usd).toBeCloseTo(
      (8 * (MINI.input - MINI.cachedInput!)) / 1e6,
      12,
    );

    const u = await usage('bob');
    expect(u).toMatchObject({ requests: 2, cached_tokens: 8, prompt_tokens: 2 * p });
    expect(u.cost_usd).toBeCloseTo(uncached.body.cost_usd + cached.body.cost_usd, 9);
    const line = h.logger.records('openai call').at(-1)!;
    expect(line).toMatchObject({
      cached_tokens: 8,
      reasoning_tokens: REASONING,
      prompt_tokens: p,
      completion_tokens: c,
    });
    expect(line.cost_usd).toBeCloseTo(cached.body.cost_usd, 12);
  });

  it('a model without a price: cost null in the response, warned once, counted in metrics and unpriced_requests, never $0', async () => {
    const priced = await request(h.server).post('/chat').set(bearer('carol')).send(userMessage('priced'));
    const a = await request(h.server)
      .post('/chat')
      .set(bearer('carol'))
      .send({ ...userMessage('unpriced one'), model: 'acme-llm-1' });
    const b = await request(h.server)
      .post('/chat')
      .set(bearer('carol'))
      .send({ ...userMessage('unpriced two'), model: 'acme-llm-1' });
    expect([priced.status, a.status, b.status]).toEqual([200, 200, 200]);
    expect(a.body.model).toBe('acme-llm-1');
    expect(a.body.cost_usd).toBeNull();
    expect(b.body.cost_usd).toBeNull();
    expect(fake.requestsTo('/v1/chat/completions', 'acme-llm-1')).toHaveLength(2);

    const warnings = h.logger.lines.filter(
      (l) =>
        l.level === 'warn' && String(l.message).includes('acme-llm-1') && /no price/.test(String(l.message)),
    );
    expect(warnings).toHaveLength(1);
    const calls = h.logger.records('openai call').filter((l) => l.model === 'acme-llm-1');
    expect(calls).toHaveLength(2);
    for (const l of calls) expect(l.cost_usd).toBeNull();

    const metrics = (await request(h.server).get('/metrics')).text;
    expect(metricValue(metrics, 'openai_unpriced_calls_total', { model: 'other' })).toBeGreaterThanOrEqual(2);
    expect(metrics).not.toContain('acme-llm-1');

    const u = await usage('carol');
    expect(u).toMatchObject({ requests: 3, unpriced_requests: 2 });
    expect(u.cost_usd).toBeCloseTo(priced.body.cost_usd, 12);
    expect(u.by_model['acme-llm-1']).toMatchObject({ requests: 2, cost_usd: null, unpriced_requests: 2 });
    expect(u.by_model['acme-llm-1'].total_tokens).toBe(a.body.usage.total_tokens + b.body.usage.total_tokens);
  });

  it('a stream cut by the upstream is accounted from what was received (estimated)', async () => {
    fake.fault({ path: '/v1/chat/completions', streamCutAfterChunks: 3 });
    const res = await request(h.server)
      .post('/chat/stream')
      .set(bearer('dave'))
      .send(userMessage('a sentence long enough to be cut after three chunks of it'))
      .buffer(true)
      .parse(sseText);
    const events = sseEvents(res.body as string);
    expect(JSON.parse(events.at(-1)!).error).toBeDefined();
    const received = events
      .slice(0, -1)
      .map((e) => JSON.parse(e).delta as string)
      .join('');
    expect(received.length).toBeGreaterThan(0);
    const u = await usage('dave');
    expect(u.requests).toBe(1);
    expect(u.prompt_tokens).toBe(
      countChatPromptTokens(fake.requestsTo('/v1/chat/completions')[0].body.messages),
    );
    expect(u.completion_tokens).toBe(countTextTokens(received));
    expect(u.cost_usd).toBeCloseTo(miniCost(u.prompt_tokens, 0, u.completion_tokens), 12);
    const totals = await h.app.get(UsageService).totals('dave');
    expect(totals.estimated_requests).toBe(1);
    expect(h.logger.records('openai call').at(-1)).toMatchObject({
      status: 'incomplete',
      usage_estimated: true,
      user: 'dave',
    });
  });

  it('a failed call (upstream 500) is not usage', async () => {
    fake.fault({ path: '/v1/chat/completions', status: 500 });
    const res = await request(h.server).post('/chat').set(bearer('erin')).send(userMessage('x'));
    expect(res.status).toBe(502);
    expect(await usage('erin')).toMatchObject({
      requests: 0,
      prompt_tokens: 0,
      completion_tokens: 0,
      cost_usd: 0,
    });
  });
});
