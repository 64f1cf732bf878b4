import { performance } from 'node:perf_hooks';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { OpenAIHttpException, StreamSummary } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  fixtureOptions,
  sseEvents,
  sseText,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { RecordingHook } from '../support/recording-hook.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  auth,
  startSampleApp,
  userMessage,
  type SampleAppHandle,
} from '../support/sample-app.js';

const CHAT = '/v1/chat/completions';
const PROMPT = 'one two three four five';

describe.each(PLATFORMS)('sample POST /chat/stream failures on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake, { OPENAI_TIMEOUT_MS: '300', OPENAI_MAX_RETRIES: '1' });
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  async function stream(requestId: string) {
    const res = await request(h.server)
      .post('/chat/stream')
      .set(auth())
      .set('x-request-id', requestId)
      .send(userMessage(PROMPT))
      .buffer(true)
      .parse(sseText);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/event-stream');
    const events = sseEvents(res.body as string);
    const deltas = events.filter((e) => e.startsWith('{"delta"')).map((e) => JSON.parse(e).delta as string);
    const errors = events.filter((e) => e.startsWith('{"error"')).map((e) => JSON.parse(e).error);
    return { res, events, deltas: deltas.join(''), errors };
  }

  it('a stall after 2 chunks: the deltas, then one 504 error event, no [DONE]; accounted as incomplete', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 2 });
    const started = performance.now();
    const { events, deltas, errors } = await stream('stall-1');
    const ended = performance.now();
    expect(deltas).toBe('Echo: one ');
    expect(errors).toEqual([
      { statusCode: 504, error: 'upstream_timeout', message: expect.any(String), request_id: 'stall-1' },
    ]);
    expect(events.at(-1)).toMatch(/^\{"error"/);
    expect(events).not.toContain('[DONE]');
    expect(events.some((e) => e.includes('"usage"'))).toBe(false);
    // Never retried once streaming began.
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    // It waited for the 300 ms silence, and not much longer.
    expect(ended - fake.requestsTo(CHAT)[0].at).toBeGreaterThanOrEqual(250);
    expect(ended - started).toBeLessThan(3_000);
    const line = h.logger
      .records('openai call')
      .find((l) => l.request_id === 'stall-1' && l.endpoint === 'chat.completions')!;
    expect(line).toMatchObject({ status: 'incomplete', usage_estimated: true, user: 'alice' });
    expect(line.completion_tokens).toBeGreaterThan(0);
  });

  it('a cut connection: one 502 error event, no [DONE]', async () => {
    fake.fault({ path: CHAT, streamCutAfterChunks: 3 });
    const { events, deltas, errors } = await stream('cut-1');
    expect(deltas).toBe('Echo: one two ');
    expect(errors).toEqual([
      { statusCode: 502, error: expect.any(String), message: expect.any(String), request_id: 'cut-1' },
    ]);
    expect(events).not.toContain('[DONE]');
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    expect(
      h.logger
        .records('openai call')
        .find((l) => l.request_id === 'cut-1' && l.endpoint === 'chat.completions'),
    ).toMatchObject({ status: 'incomplete', usage_estimated: true });
  });

  it('a stream that ends without data: [DONE] is an error: one 502 error event, no [DONE]', async () => {
    fake.fault({ path: CHAT, omitDone: true });
    const { events, deltas, errors } = await stream('nodone-1');
    expect(deltas).toBe(`Echo: ${PROMPT}`);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ statusCode: 502, request_id: 'nodone-1' });
    expect(events).not.toContain('[DONE]');
    // The usage chunk did arrive: the incomplete call is accounted with real usage.
    const line = h.logger
      .records('openai call')
      .find((l) => l.request_id === 'nodone-1' && l.endpoint === 'chat.completions')!;
    expect(line.status).toBe('incomplete');
    expect(line.usage_estimated).toBeUndefined();
  });

  it('a complete stream still ends with usage then [DONE]', async () => {
    const { events, errors } = await stream('ok-1');
    expect(errors).toEqual([]);
    expect(events.at(-1)).toBe('[DONE]');
    expect(JSON.parse(events.at(-2)!).usage.completion_tokens).toBeGreaterThan(0);
  });
});

describe('ChatStream outside HTTP', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  const hook = new RecordingHook();
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { timeouts: { attemptMs: 300, deadlineMs: 5_000 } }),
      { hooks: [hook] },
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
    hook.clear();
  });

  async function drain(s: AsyncIterable<unknown>): Promise<{ chunks: number; error?: unknown }> {
    let chunks = 0;
    try {
      for await (const _ of s) chunks++;
      return { chunks };
    } catch (error) {
      return { chunks, error };
    }
  }

  it('a stall: iteration throws 504, finished rejects, and the call is settled once with estimated usage', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 2 });
    const s = await h.openai.stream({ messages: [{ role: 'user', content: PROMPT }] }, { user: 'worker-1' });
    const { chunks, error } = await drain(s);
    expect(chunks).toBe(3); // the role chunk and two content chunks
    expect((error as OpenAIHttpException).getStatus()).toBe(504);
    const failed = (await s.finished.catch((e: unknown) => e)) as OpenAIHttpException & {
      summary: StreamSummary;
    };
    expect(failed.getStatus()).toBe(504);
    expect(failed.body.error).toBe('upstream_timeout');
    expect(failed.summary.content).toBe('Echo: one ');
    expect(failed.summary.usage.estimated).toBe(true);
    expect(failed.summary.usage.completion_tokens).toBeGreaterThan(0);
    expect(failed.summary.usage.prompt_tokens).toBe(hook.reserved[0].promptTokens);
    expect(hook.settled).toHaveLength(1);
    expect(hook.settled[0].usage).toEqual(failed.summary.usage);
    expect(hook.released).toBe(0);
  });

  it('a cut stream: finished rejects with 502, settled with estimated usage', async () => {
    fake.fault({ path: CHAT, streamCutAfterChunks: 1 });
    const s = await h.openai.stream({ messages: [{ role: 'user', content: PROMPT }] });
    const { error } = await drain(s);
    expect((error as OpenAIHttpException).getStatus()).toBe(502);
    const failed = (await s.finished.catch((e: unknown) => e)) as OpenAIHttpException & {
      summary: StreamSummary;
    };
    expect(failed.getStatus()).toBe(502);
    expect(failed.summary.usage.estimated).toBe(true);
    expect(hook.settled).toHaveLength(1);
    expect(hook.settled[0].usage.estimated).toBe(true);
  });

  it('a consumer that stops early aborts the upstream and still settles once', async () => {
    const s = await h.openai.stream({ messages: [{ role: 'user', content: PROMPT }] });
    for await (const _ of s) break;
    const failed = (await s.finished.catch((e: unknown) => e)) as OpenAIHttpException;
    expect(failed.getStatus()).toBe(499);
    expect(hook.settled).toHaveLength(1);
    expect(hook.released).toBe(0);
  });

  it('an upstream error before the stream starts releases the reservation instead', async () => {
    fake.fault({ path: CHAT, status: 400 });
    await expect(h.openai.stream({ messages: [{ role: 'user', content: PROMPT }] })).rejects.toMatchObject({
      status: 400,
    });
    expect(hook.released).toBe(1);
    expect(hook.settled).toHaveLength(0);
  });
});
