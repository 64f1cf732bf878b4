import { Counter, Histogram, Registry } from 'prom-client';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { OpenAIConfigError, OpenAIMetricsService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { metricValue } from '../support/prometheus.js';
import { userMessage } from '../support/sample-app.js';

const MINI = 'gpt-4o-mini-2024-07-18';

describe('several OpenAIModule instances in one process on one prom-client registry', () => {
  let fake: FakeOpenAIServer;
  const apps: FixtureHandle[] = [];
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((a) => a.close()));
  });
  afterAll(async () => {
    await fake?.close();
  });

  it('an Express app and a Fastify app both serve calls, and both counts show in one exposition', async () => {
    const registry = new Registry();
    const options = fixtureOptions(fake.baseURL, TEST_API_KEY, { metrics: { registry } });
    apps.push(await startFixtureApp('express', options));
    apps.push(await startFixtureApp('fastify', options)); // used to throw "already been registered"
    const [web, worker] = apps;
    const upstreamBefore = fake.requestsTo('/v1/chat/completions').length;

    for (let i = 0; i < 2; i++)
      expect(
        (
          await request(web.server)
            .post('/chat')
            .send(userMessage(`web ${i}`))
        ).status,
      ).toBe(200);
    for (let i = 0; i < 3; i++)
      expect(
        (
          await request(worker.server)
            .post('/chat')
            .send(userMessage(`worker ${i}`))
        ).status,
      ).toBe(200);
    expect(fake.requestsTo('/v1/chat/completions').length - upstreamBefore).toBe(5);

    const text = await registry.metrics();
    const attempts = { endpoint: 'chat.completions', model: MINI, status_class: '2xx' };
    expect(metricValue(text, 'openai_upstream_requests_total', attempts)).toBe(5);
    expect(metricValue(text, 'openai_upstream_latency_seconds_count', { model: MINI })).toBe(5);
    // one family per metric name, not one per module
    expect(text.match(/^# TYPE openai_upstream_requests_total /gm)).toHaveLength(1);
    // each module's service serves the same registry
    expect(await web.app.get(OpenAIMetricsService).metrics()).toBe(text);
    expect(await worker.app.get(OpenAIMetricsService).metrics()).toBe(text);
  });

  it('a module after a closed one (a fresh app per e2e test) keeps counting in the same collectors', async () => {
    const registry = new Registry();
    const options = fixtureOptions(fake.baseURL, TEST_API_KEY, { metrics: { registry } });
    const first = await startFixtureApp('express', options);
    expect((await request(first.server).post('/chat').send(userMessage('one'))).status).toBe(200);
    await first.close();
    apps.push(await startFixtureApp('express', options));
    expect((await request(apps[0].server).post('/chat').send(userMessage('two'))).status).toBe(200);
    const text = await registry.metrics();
    expect(metricValue(text, 'openai_upstream_requests_total', { status_class: '2xx' })).toBe(2);
  });

  it('fails at boot, listing every clash, when the registry holds a same-named metric of another shape', async () => {
    const registry = new Registry();
    const appCounter = new Counter({
      name: 'openai_tokens_total',
      help: 'the app',
      labelNames: ['model'],
      registers: [registry],
    });
    const appHistogram = new Histogram({
      name: 'openai_upstream_latency_seconds',
      help: 'the app',
      labelNames: ['endpoint', 'model'],
      buckets: [1, 2],
      registers: [registry],
    });
    const boot = startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { metrics: { registry } }),
    );
    const error = await boot.then(
      (h) => {
        apps.push(h);
        return null;
      },
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(OpenAIConfigError);
    const message = (error as Error).message;
    expect(message).toContain('2 problem(s)');
    expect(message).toContain(
      'metrics.registry: "openai_tokens_total" is already registered there as a counter with labels [model], where the library needs a counter with labels [model, route, type]',
    );
    expect(message).toMatch(/"openai_upstream_latency_seconds" .* buckets \[1, 2\]/);
    expect(message).toContain('metrics.prefix');
    // the app's own metrics are untouched
    expect(registry.getSingleMetric('openai_tokens_total')).toBe(appCounter);
    expect(registry.getSingleMetric('openai_upstream_latency_seconds')).toBe(appHistogram);
  });

  it('another prefix on the same registry keeps two modules apart', async () => {
    const registry = new Registry();
    apps.push(
      await startFixtureApp('express', fixtureOptions(fake.baseURL, TEST_API_KEY, { metrics: { registry } })),
    );
    apps.push(
      await startFixtureApp(
        'express',
        fixtureOptions(fake.baseURL, TEST_API_KEY, { metrics: { registry, prefix: 'batch_openai_' } }),
      ),
    );
    expect((await request(apps[1].server).post('/chat').send(userMessage('batch'))).status).toBe(200);
    const text = await registry.metrics();
    expect(metricValue(text, 'batch_openai_upstream_requests_total')).toBe(1);
    expect(metricValue(text, 'openai_upstream_requests_total')).toBe(0);
  });
});
