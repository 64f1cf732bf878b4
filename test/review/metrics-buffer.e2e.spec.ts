import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp } from '../support/fixture-app.js';
import { metricValue } from '../support/prometheus.js';

const MINI = 'gpt-4o-mini-2024-07-18';
const ATTEMPTS = { endpoint: 'chat.completions', model: MINI, status_class: '2xx' };

describe('metrics buffered per call and applied before each read', () => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await fake.close();
  });
  const body = (i: number) => ({
    messages: [{ role: 'user' as const, content: `hello ${i}` }],
    max_tokens: 20,
  });

  it('many calls with reads in between: every count once, none lost, none doubled', async () => {
    const registry = new Registry();
    const h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { metrics: { registry } }),
    );
    try {
      let prompt = 0;
      let completion = 0;
      for (let round = 0; round < 3; round++) {
        const rs = await Promise.all(
          Array.from({ length: 300 }, (_, i) => h.openai.chat(body(i), { user: 'm' })),
        );
        for (const r of rs) {
          prompt += r.usage.prompt_tokens;
          completion += r.usage.completion_tokens;
        }
        // read twice: the second read must not add anything
        await registry.metrics();
        const text = await registry.metrics();
        expect(metricValue(text, 'openai_upstream_requests_total', ATTEMPTS)).toBe(300 * (round + 1));
        expect(metricValue(text, 'openai_upstream_latency_seconds_count', { model: MINI })).toBe(
          300 * (round + 1),
        );
        expect(metricValue(text, 'openai_tokens_total', { model: MINI, type: 'prompt' })).toBe(prompt);
        expect(metricValue(text, 'openai_tokens_total', { model: MINI, type: 'completion' })).toBe(
          completion,
        );
        const json = await registry.getMetricsAsJSON();
        expect(json.length).toBeGreaterThan(0);
      }
    } finally {
      await h.close();
    }
  });

  it('a call in flight while the module closes is still counted in the (shared) registry', async () => {
    const registry = new Registry();
    const h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { metrics: { registry } }),
    );
    fake.fault({ path: '/v1/chat/completions', delayMs: 300, times: 1 });
    const pending = h.openai.chat(body(1), { user: 'm' });
    await new Promise((r) => setTimeout(r, 50));
    const closing = h.close();
    const r = await pending;
    await closing;
    expect(r.content).toBeTruthy();
    const text = await registry.metrics();
    expect(metricValue(text, 'openai_upstream_requests_total', ATTEMPTS)).toBe(1);
    expect(metricValue(text, 'openai_upstream_latency_seconds_count', { model: MINI })).toBe(1);
  });
});
