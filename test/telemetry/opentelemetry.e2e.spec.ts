import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { SpanKind, SpanStatusCode, context, trace } from '@opentelemetry/api';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OpenAIMetricsService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { metricValue } from '../support/prometheus.js';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

describe.each(PLATFORMS)('OpenTelemetry spans and the overhead measure on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  const contextManager = new AsyncLocalStorageContextManager();
  beforeAll(async () => {
    context.setGlobalContextManager(contextManager.enable());
    trace.setGlobalTracerProvider(provider);
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, { metrics: { overheadHeader: true } }),
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
    trace.disable();
    context.disable();
  });
  beforeEach(() => {
    exporter.reset();
    fake.reset();
  });

  it('one CLIENT span per call, child of the active span, with the GenAI attributes and the upstream request ID', async () => {
    const parent = provider.getTracer('test').startSpan('handler');
    const r = await context.with(trace.setSpan(context.active(), parent), () =>
      h.openai.chat({ messages: [{ role: 'user', content: 'trace me' }], max_tokens: 50 }, { user: 'u1' }),
    );
    parent.end();
    const spans = exporter.getFinishedSpans().filter((s) => s.name !== 'handler');
    expect(spans).toHaveLength(1);
    const span = spans[0];
    expect(span.name).toBe('chat gpt-4o-mini-2024-07-18');
    expect(span.kind).toBe(SpanKind.CLIENT);
    expect(span.parentSpanContext?.spanId).toBe(parent.spanContext().spanId);
    expect(span.attributes).toMatchObject({
      'gen_ai.system': 'openai',
      'gen_ai.operation.name': 'chat',
      'gen_ai.request.model': 'gpt-4o-mini-2024-07-18',
      'gen_ai.request.max_tokens': 50,
      'gen_ai.response.model': r.model,
      'gen_ai.usage.input_tokens': r.usage.prompt_tokens,
      'gen_ai.usage.output_tokens': r.usage.completion_tokens,
      'openai.request.id': r.openaiRequestId,
    });
    expect(span.status.code).not.toBe(SpanStatusCode.ERROR);
    // No user identity and no prompt text in span attributes.
    expect(JSON.stringify(span.attributes)).not.toMatch(/u1|trace me/);
  });

  it('a failed call: status ERROR with the library error code; a Responses stream: one span ended at its end', async () => {
    fake.fault({ path: '/v1/chat/completions', status: 500 });
    await expect(
      h.openai.chat({ messages: [{ role: 'user', content: 'x' }] }, { maxRetries: 0 }),
    ).rejects.toMatchObject({ status: 502 });
    fake.reset();
    const stream = await h.openai.streamResponse({ input: 'stream me' });
    for await (const _ of stream) void _;
    const summary = await stream.finished;
    const [failed, streamed] = exporter.getFinishedSpans();
    expect(failed.status.code).toBe(SpanStatusCode.ERROR);
    expect(failed.attributes['error.type']).toBe('upstream_error');
    expect(streamed.name).toBe('chat gpt-4o-mini-2024-07-18');
    expect(streamed.attributes).toMatchObject({
      'openai.api': 'responses',
      'gen_ai.usage.output_tokens': summary.usage.completion_tokens,
    });
  });

  it('x-openai-overhead-ms on the response and openai_pipeline_overhead_seconds in the metrics', async () => {
    const res = await request(h.server)
      .post('/chat')
      .send({ messages: [{ role: 'user', content: 'how much overhead' }] });
    expect(res.status).toBe(200);
    const ms = Number(res.headers['x-openai-overhead-ms']);
    expect(Number.isFinite(ms)).toBe(true);
    expect(ms).toBeGreaterThanOrEqual(0);
    const text = await h.app.get(OpenAIMetricsService).metrics();
    expect(
      metricValue(text, 'openai_pipeline_overhead_seconds_count', { endpoint: 'chat.completions' }),
    ).toBeGreaterThan(0);
  });
});
