import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { sseEvents, sseText } from '../support/fixture-app.js';
import { PLATFORMS, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';

const MINI = 'gpt-4o-mini-2024-07-18';
const FALLBACK = 'gpt-4o-2024-08-06';
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'];
const bearer = (user: string) => ({ authorization: `Bearer ${user}-token` });

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]),
    );
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** Sum of the samples of `name` whose labels include `labels`. */
const sum = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

describe.each(PLATFORMS)('GET /metrics matches the traffic sent, on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ cachedTokens: 2, reasoningTokens: 1 });
    h = await startSampleApp(platform, fake, {
      SAMPLE_USERS: USERS.map((u) => `${u}:${u}-token`).join(','),
      RATE_LIMIT_RPM: '2',
      OPENAI_MAX_RETRIES: '2',
      OPENAI_FALLBACK_MODELS: FALLBACK,
    });
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });

  it('counts attempts by status class, retries, fallbacks, errors, rejections, tokens, cost and latency', async () => {
    const ids: string[] = [];
    let seq = 0;
    const chat = (user: string, body: object) => {
      const id = `metrics-rid-${platform}-${seq++}`;
      ids.push(id);
      return request(h.server).post('/chat').set(bearer(user)).set('x-request-id', id).send(body);
    };
    /** Successful calls: model label -> usages and costs. */
    const ok: Record<string, { usage: Usage[]; cost: number[] }> = {};
    const record = (label: string, usage: Usage, cost: number | null) => {
      const m = (ok[label] ??= { usage: [], cost: [] });
      m.usage.push(usage);
      if (cost !== null) m.cost.push(cost);
    };

    // alice: two calls, then the request limit (2 per minute) refuses the third
    for (let i = 0; i < 2; i++) {
      const r = await chat('alice', userMessage(`hello ${i}`));
      expect(r.status).toBe(200);
      record(MINI, r.body.usage, r.body.cost_usd);
    }
    const limited = await chat('alice', userMessage('one too many'));
    expect(limited.status).toBe(429);
    expect(limited.body.error).toBe('rate_limit_exceeded');

    // bob: one 500, then a successful retry
    fake.fault({ path: '/v1/chat/completions', status: 500, times: 1, retryAfterMs: 5 });
    const bob = await chat('bob', userMessage('retry me'));
    expect(bob.status).toBe(200);
    record(MINI, bob.body.usage, bob.body.cost_usd);

    // carol: the model fails three times (2 retries), the fallback answers
    fake.fault({ path: '/v1/chat/completions', model: MINI, status: 500, times: 3, retryAfterMs: 5 });
    const carol = await chat('carol', userMessage('fall back'));
    expect(carol.status).toBe(200);
    expect(carol.body).toMatchObject({ model: FALLBACK, fallback_from: MINI });
    record(FALLBACK, carol.body.usage, carol.body.cost_usd);

    // dave: everything fails: 3 attempts on each model, then 502
    fake.fault({ path: '/v1/chat/completions', status: 500, times: 6, retryAfterMs: 5 });
    expect((await chat('dave', userMessage('fail'))).status).toBe(502);
    fake.clearFaults();

    // erin: a model outside the configured and priced set, then a stream
    const erin = await chat('erin', { ...userMessage('unknown model'), model: 'acme-llm-1' });
    expect(erin.status).toBe(200);
    expect(erin.body.cost_usd).toBeNull();
    record('other', erin.body.usage, null);
    const stream = await request(h.server)
      .post('/chat/stream')
      .set(bearer('erin'))
      .set('x-request-id', `metrics-rid-${platform}-stream`)
      .send(userMessage('stream it'))
      .buffer(true)
      .parse(sseText);
    ids.push(`metrics-rid-${platform}-stream`);
    const summary = JSON.parse(sseEvents(stream.body as string).at(-2)!);
    record(MINI, summary.usage, summary.cost_usd);

    // frank: a made-up snapshot of a known model: its client-chosen date must not become a label
    const frank = await chat('frank', { ...userMessage('future'), model: 'gpt-4o-2099-01-01' });
    expect(frank.status).toBe(200);
    record('gpt-4o', frank.body.usage, frank.body.cost_usd);

    const res = await request(h.server).get('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/plain');
    const text = res.text;
    const s = parse(text);
    const chatReq = { endpoint: 'chat.completions' };

    // attempts by status class, cross-checked with what the upstream received
    expect(sum(s, 'openai_upstream_requests_total', { ...chatReq, model: MINI, status_class: '2xx' })).toBe(
      4,
    );
    expect(sum(s, 'openai_upstream_requests_total', { ...chatReq, model: MINI, status_class: '5xx' })).toBe(
      7,
    );
    expect(
      sum(s, 'openai_upstream_requests_total', { ...chatReq, model: FALLBACK, status_class: '2xx' }),
    ).toBe(1);
    expect(
      sum(s, 'openai_upstream_requests_total', { ...chatReq, model: FALLBACK, status_class: '5xx' }),
    ).toBe(3);
    expect(
      sum(s, 'openai_upstream_requests_total', { ...chatReq, model: 'other', status_class: '2xx' }),
    ).toBe(1);
    expect(
      sum(s, 'openai_upstream_requests_total', { ...chatReq, model: 'gpt-4o', status_class: '2xx' }),
    ).toBe(1);
    expect(sum(s, 'openai_upstream_requests_total', chatReq)).toBe(
      fake.requestsTo('/v1/chat/completions').length,
    );
    expect(sum(s, 'openai_upstream_requests_total', { endpoint: 'moderations' })).toBe(
      fake.requestsTo('/v1/moderations').length,
    );
    expect(sum(s, 'openai_retries_total', { model: MINI })).toBe(5);
    expect(sum(s, 'openai_retries_total', { model: FALLBACK })).toBe(2);
    expect(sum(s, 'openai_fallbacks_total', { from: MINI, to: FALLBACK })).toBe(1);
    expect(sum(s, 'openai_fallbacks_total')).toBe(1);
    expect(sum(s, 'openai_upstream_errors_total', { ...chatReq, model: MINI })).toBe(1);
    expect(sum(s, 'openai_upstream_errors_total')).toBe(1);
    expect(sum(s, 'openai_rate_limit_rejections_total', { kind: 'requests', limit: 'minute' })).toBe(1);
    expect(sum(s, 'openai_budget_rejections_total')).toBe(0);
    expect(sum(s, 'openai_unpriced_calls_total', { model: 'other' })).toBe(1);
    expect(sum(s, 'openai_unpriced_calls_total')).toBe(1);

    // tokens by type, cost and latency per model label, from the responses
    const labels = Object.keys(ok).sort();
    expect(labels).toEqual([FALLBACK, MINI, 'gpt-4o', 'other'].sort());
    const seen = labels.map((label) => {
      const tokens = (type: string) => sum(s, 'openai_tokens_total', { model: label, type });
      return {
        label,
        prompt: tokens('prompt'),
        completion: tokens('completion'),
        cached: tokens('cached'),
        reasoning: tokens('reasoning'),
        cost: sum(s, 'openai_cost_usd_total', { model: label }),
        latencyCount: sum(s, 'openai_upstream_latency_seconds_count', { ...chatReq, model: label }),
      };
    });
    const sent = labels.map((label) => {
      const m = ok[label];
      return {
        label,
        prompt: m.usage.reduce((t, u) => t + u.prompt_tokens, 0),
        completion: m.usage.reduce((t, u) => t + u.completion_tokens, 0),
        cached: 2 * m.usage.length,
        reasoning: m.usage.length,
        cost: expect.closeTo(
          m.cost.reduce((a, b) => a + b, 0),
          12,
        ),
        latencyCount: m.usage.length,
      };
    });
    expect(seen).toEqual(sent);
    expect(sum(s, 'openai_tokens_total', { model: MINI, route: 'POST /chat/stream', type: 'prompt' })).toBe(
      summary.usage.prompt_tokens,
    );
    expect(sum(s, 'openai_upstream_latency_seconds_count', chatReq)).toBe(7);

    // labels: never a user, a request ID, an upstream request ID, or a client-chosen model name
    expect(text).not.toContain('alice');
    expect(text).not.toContain('acme-llm');
    for (const id of ids) expect(text).not.toContain(id);
    for (const r of fake.requests) expect(text).not.toContain(r.requestId);
    const labelValues = new Set(s.flatMap((x) => Object.values(x.labels)));
    for (const u of USERS) expect(labelValues.has(u)).toBe(false);
    expect([...labelValues].filter((v) => v.includes('2099'))).toEqual([]);
    expect(sum(s, 'openai_upstream_requests_total', { model: 'gpt-4o-2099-01-01' })).toBe(0);
  });

  it('is served without authentication, as Prometheus text', async () => {
    const res = await request(h.server).get('/metrics');
    expect(res.status).toBe(200);
    expect(res.text).toMatch(/^# HELP openai_/m);
    expect(res.text).toMatch(/^# TYPE openai_upstream_latency_seconds histogram$/m);
  });
});
