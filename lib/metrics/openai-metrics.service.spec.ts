import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import type { NormalizedUsage, UpstreamCall } from '../call/upstream-call.js';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import type { OpenAIModuleOptions } from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from './openai-metrics.service.js';
import { metricValue } from '../../test/support/prometheus.js';

const service = (extra: OpenAIModuleOptions = {}) =>
  new OpenAIMetricsService(resolveOpenAIOptions({ apiKey: 'sk-unit', environment: 'test', ...extra }));

const call = (model: string, route?: string): UpstreamCall => ({
  endpoint: 'chat.completions',
  model,
  stream: false,
  user: 'alice',
  route,
  requestId: 'rid-123',
  promptTokens: 1,
  maxOutputTokens: 1,
  candidates: [model],
});

const usage: NormalizedUsage = {
  prompt_tokens: 100,
  cached_tokens: 40,
  completion_tokens: 30,
  reasoning_tokens: 10,
  total_tokens: 130,
  estimated: false,
};

describe('OpenAIMetricsService.modelLabel', () => {
  const m = service({
    models: {
      default: 'gpt-4o-mini-2024-07-18',
      aliases: { chat: 'gpt-4.1-2025-04-14' },
      fallbacks: ['gpt-4o-2024-08-06'],
    },
    pricing: { models: { 'acme-llm': { input: 1, output: 1 } } },
  });

  it('keeps configured and priced models', () => {
    const names = [
      'gpt-4o-mini-2024-07-18',
      'gpt-4.1-2025-04-14',
      'gpt-4o-2024-08-06',
      'gpt-4o',
      'o3',
      'acme-llm',
      'omni-moderation-latest',
      'text-embedding-3-small',
    ];
    expect(names.map((n) => m.modelLabel(n))).toEqual(names);
  });

  it('labels any other model `other`', () => {
    expect(m.modelLabel('my-finetune')).toBe('other');
    expect(m.modelLabel('acme-llm-9')).toBe('other');
    expect(m.modelLabel('')).toBe('other');
  });

  // The model name comes from the client: a label per made-up snapshot date would be unbounded.
  it('labels an unknown snapshot of a known model by its base name, never by the date it carries', () => {
    expect(m.modelLabel('gpt-4o-2099-01-01')).toBe('gpt-4o');
    expect(m.modelLabel('gpt-4o-mini-1999-12-31')).toBe('gpt-4o-mini');
    expect(m.modelLabel('acme-llm-2031-05-17')).toBe('acme-llm');
    const labels = new Set(Array.from({ length: 500 }, (_, i) => m.modelLabel(`gpt-4o-${2000 + i}-01-01`)));
    expect(labels.size).toBe(1);
  });
});

describe('OpenAIMetricsService', () => {
  it('counts attempts by status class, retries, tokens by type, cost, latency, fallbacks', async () => {
    const m = service({ models: { fallbacks: ['gpt-4o-2024-08-06'] } });
    const c = call('gpt-4o-mini-2024-07-18', 'POST /chat');
    m.attempt(c, 'gpt-4o-mini-2024-07-18', '5xx', false);
    m.attempt(c, 'gpt-4o-mini-2024-07-18', 'timeout', true);
    m.attempt(c, 'gpt-4o-2024-08-06', '2xx', false);
    m.succeeded(c, 'gpt-4o-2024-08-06', 1500, usage, 0.25, 'gpt-4o-mini-2024-07-18');
    m.failed(c, 'upstream_error');
    m.rateLimited('requests', 'minute');
    m.budgetRejected('project', 'month');
    m.unpricedCall('made-up-model');
    m.succeeded(call('made-up-model'), 'made-up-model', 10, { ...usage, estimated: true }, null);
    const t = await m.metrics();
    expect(
      metricValue(t, 'openai_upstream_requests_total', {
        model: 'gpt-4o-mini-2024-07-18',
        status_class: '5xx',
      }),
    ).toBe(1);
    expect(
      metricValue(t, 'openai_upstream_requests_total', {
        model: 'gpt-4o-mini-2024-07-18',
        status_class: 'timeout',
      }),
    ).toBe(1);
    expect(
      metricValue(t, 'openai_upstream_requests_total', {
        model: 'gpt-4o-2024-08-06',
        status_class: '2xx',
        endpoint: 'chat.completions',
      }),
    ).toBe(1);
    expect(metricValue(t, 'openai_retries_total')).toBe(1);
    expect(
      metricValue(t, 'openai_tokens_total', {
        model: 'gpt-4o-2024-08-06',
        route: 'POST /chat',
        type: 'prompt',
      }),
    ).toBe(100);
    expect(metricValue(t, 'openai_tokens_total', { model: 'gpt-4o-2024-08-06', type: 'cached' })).toBe(40);
    expect(metricValue(t, 'openai_tokens_total', { model: 'gpt-4o-2024-08-06', type: 'completion' })).toBe(
      30,
    );
    expect(metricValue(t, 'openai_tokens_total', { model: 'gpt-4o-2024-08-06', type: 'reasoning' })).toBe(10);
    expect(metricValue(t, 'openai_tokens_total', { model: 'other', route: 'none', type: 'prompt' })).toBe(
      100,
    );
    expect(metricValue(t, 'openai_cost_usd_total', { model: 'gpt-4o-2024-08-06', route: 'POST /chat' })).toBe(
      0.25,
    );
    expect(metricValue(t, 'openai_cost_usd_total', { model: 'other' })).toBe(0);
    expect(metricValue(t, 'openai_upstream_latency_seconds_count', { model: 'gpt-4o-2024-08-06' })).toBe(1);
    expect(metricValue(t, 'openai_upstream_latency_seconds_sum', { model: 'gpt-4o-2024-08-06' })).toBe(1.5);
    expect(
      metricValue(t, 'openai_upstream_latency_seconds_bucket', { model: 'gpt-4o-2024-08-06', le: '1' }),
    ).toBe(0);
    expect(
      metricValue(t, 'openai_upstream_latency_seconds_bucket', { model: 'gpt-4o-2024-08-06', le: '2.5' }),
    ).toBe(1);
    expect(
      metricValue(t, 'openai_fallbacks_total', { from: 'gpt-4o-mini-2024-07-18', to: 'gpt-4o-2024-08-06' }),
    ).toBe(1);
    expect(
      metricValue(t, 'openai_upstream_errors_total', {
        model: 'gpt-4o-mini-2024-07-18',
        error: 'upstream_error',
      }),
    ).toBe(1);
    expect(metricValue(t, 'openai_rate_limit_rejections_total', { kind: 'requests', limit: 'minute' })).toBe(
      1,
    );
    expect(metricValue(t, 'openai_budget_rejections_total', { scope: 'project', period: 'month' })).toBe(1);
    expect(metricValue(t, 'openai_unpriced_calls_total', { model: 'other' })).toBe(1);
    expect(metricValue(t, 'openai_estimated_usage_total', { model: 'other' })).toBe(1);
    expect(t).not.toContain('alice');
    expect(t).not.toContain('rid-123');
    expect(t).not.toContain('made-up-model');
  });

  it('registers in a given registry, with a given prefix', async () => {
    const registry = new Registry();
    const m = service({ metrics: { registry, prefix: 'llm_' } });
    m.rateLimited('tokens', 'minute');
    expect(await registry.metrics()).toContain(
      'llm_rate_limit_rejections_total{kind="tokens",limit="minute"} 1',
    );
    expect(m.contentType).toBe(registry.contentType);
  });

  it('is a no-op when disabled', async () => {
    const m = service({ metrics: { enabled: false } });
    const c = call('gpt-4o-mini-2024-07-18');
    m.attempt(c, c.model, '2xx', true);
    m.succeeded(c, c.model, 1, usage, 1);
    m.failed(c, 'x');
    m.rateLimited('requests', 'minute');
    m.budgetRejected('user', 'day');
    m.unpricedCall('x');
    m.storageTransition('redis', true);
    const t = await m.metrics();
    expect(t.split('\n').filter((l) => l && !l.startsWith('#'))).toEqual([]);
  });
});
