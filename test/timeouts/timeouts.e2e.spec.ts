import { performance } from 'node:perf_hooks';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  auth,
  startSampleApp,
  userMessage,
  type SampleAppHandle,
} from '../support/sample-app.js';

const CHAT = '/v1/chat/completions';

describe.each(PLATFORMS)('sample upstream timeouts on %s (OPENAI_TIMEOUT_MS)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake, { OPENAI_TIMEOUT_MS: '250', OPENAI_MAX_RETRIES: '1' });
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('a hanging upstream: 504 upstream_timeout after each attempt timed out', async () => {
    fake.fault({ path: CHAT, hang: true });
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', 'hang-1')
      .send(userMessage('wait'));
    const answeredAt = performance.now();
    expect(res.status).toBe(504);
    expect(res.body).toMatchObject({ statusCode: 504, error: 'upstream_timeout', request_id: 'hang-1' });
    expect(res.headers['x-request-id']).toBe('hang-1');
    const attempts = fake.requestsTo(CHAT);
    expect(attempts).toHaveLength(2);
    // The second attempt started only after the first one's 250 ms timeout (plus a small backoff).
    expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(200);
    expect(answeredAt - attempts[1].at).toBeGreaterThanOrEqual(200);
    expect(answeredAt - attempts[0].at).toBeLessThan(3_000);
    expect(h.logger.records('openai call failed').find((l) => l.request_id === 'hang-1')).toMatchObject({
      status: 504,
      error: 'upstream_timeout',
      attempts: 2,
    });
  });

  it('a slow upstream within the timeout answers', async () => {
    fake.fault({ path: CHAT, delayMs: 50 });
    const res = await request(h.server).post('/chat').set(auth()).send(userMessage('slow'));
    expect(res.status).toBe(200);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it('one hanging attempt, then an answer: 200 after a retry', async () => {
    fake.fault({ path: CHAT, hang: true, times: 1 });
    const res = await request(h.server).post('/chat').set(auth()).send(userMessage('again'));
    expect(res.status).toBe(200);
    expect(res.body.content).toBe('Echo: again');
    expect(fake.requestsTo(CHAT)).toHaveLength(2);
  });

  it('a client that goes away cancels the upstream call: no retry, logged as 499', async () => {
    fake.fault({ path: CHAT, hang: true });
    await expect(
      request(h.server)
        .post('/chat')
        .set(auth())
        .set('x-request-id', 'gone-1')
        .timeout(100)
        .send(userMessage('bye')),
    ).rejects.toThrow(/timeout/i);
    const line = await vi.waitFor(
      () => {
        const l = h.logger.records('openai call failed').find((x) => x.request_id === 'gone-1');
        if (!l) throw new Error('not logged yet');
        return l;
      },
      { timeout: 2_000, interval: 20 },
    );
    expect(line).toMatchObject({ status: 499, error: 'client_closed_request' });
    // Past the 250 ms attempt timeout and the backoff: a retry would have arrived by now.
    await new Promise((r) => setTimeout(r, 400));
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it('a stream whose headers never come: 504 JSON before the first byte', async () => {
    fake.fault({ path: CHAT, hang: true });
    const res = await request(h.server).post('/chat/stream').set(auth()).send(userMessage('wait'));
    expect(res.status).toBe(504);
    expect(res.headers['content-type']).toContain('application/json');
    expect(res.body.error).toBe('upstream_timeout');
  });
});

describe('per-call attempt timeout (service, no HTTP)', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        retry: { maxRetries: 1 },
        timeouts: { attemptMs: 200, deadlineMs: 5_000 },
      }),
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });
  const ask = { messages: [{ role: 'user' as const, content: 'slow one' }] };

  it('a longer attemptTimeoutMs lets a slow upstream answer (the client-wide timeout does not cut it)', async () => {
    fake.fault({ path: CHAT, delayMs: 500 });
    const r = await h.openai.chat(ask, { attemptTimeoutMs: 2_000 });
    expect(r.content).toBe('Echo: slow one');
    expect(r.attempts).toBe(1);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it('a longer attemptTimeoutMs also holds for a stream and for embeddings', async () => {
    fake.fault({ path: CHAT, delayMs: 500 });
    fake.fault({ path: '/v1/embeddings', delayMs: 500 });
    const s = await h.openai.stream(ask, { attemptTimeoutMs: 2_000 });
    for await (const _ of s) void _;
    expect((await s.finished).content).toBe('Echo: slow one');
    expect((await h.openai.embed({ input: 'x' }, { attemptTimeoutMs: 2_000 })).attempts).toBe(1);
  });

  it('a shorter attemptTimeoutMs times out each attempt: 504', async () => {
    fake.fault({ path: CHAT, delayMs: 500 });
    await expect(h.openai.chat(ask, { attemptTimeoutMs: 100 })).rejects.toMatchObject({ status: 504 });
    const attempts = fake.requestsTo(CHAT);
    expect(attempts).toHaveLength(2);
    expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(80);
    expect(attempts[1].at - attempts[0].at).toBeLessThan(450);
  });
});
