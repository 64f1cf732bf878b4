import { performance } from 'node:perf_hooks';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';

const CHAT = '/v1/chat/completions';
const body = { messages: [{ role: 'user', content: 'retry me' }] };

/** Milliseconds between consecutive recorded upstream attempts. */
const gaps = (fake: FakeOpenAIServer) => {
  const at = fake.requestsTo(CHAT).map((r) => r.at);
  return at.slice(1).map((t, i) => t - at[i]);
};

describe.each(PLATFORMS)('retries on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  let capped: FixtureHandle;
  let short: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, { retry: { maxRetries: 2 } }),
    );
  });
  afterAll(async () => {
    await h.close();
    await capped?.close();
    await short?.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('a persistent 500: maxRetries + 1 attempts, then 502', async () => {
    fake.fault({ path: CHAT, status: 500 });
    const res = await request(h.server).post('/chat').set('x-request-id', 'r-500').send(body);
    expect(res.status).toBe(502);
    expect(res.body).toMatchObject({ statusCode: 502, error: 'upstream_error', request_id: 'r-500' });
    expect(fake.requestsTo(CHAT)).toHaveLength(3);
    expect(h.logger.records('openai call failed').find((l) => l.request_id === 'r-500')).toMatchObject({
      attempts: 3,
      upstream_status: 500,
    });
    expect(h.logger.records('openai attempt failed').filter((l) => l.request_id === 'r-500')).toHaveLength(3);
  });

  it('a per-call maxRetries overrides the configured one', async () => {
    fake.fault({ path: CHAT, status: 503 });
    await expect(h.openai.chat(body as never, { maxRetries: 4 })).rejects.toMatchObject({ status: 502 });
    expect(fake.requestsTo(CHAT)).toHaveLength(5);
    fake.reset();
    fake.fault({ path: CHAT, status: 503 });
    await expect(h.openai.chat(body as never, { maxRetries: 0 })).rejects.toMatchObject({ status: 502 });
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it('a transient 500 then success: 200, the log line counts the retry', async () => {
    fake.fault({ path: CHAT, status: 500, times: 1 });
    const res = await request(h.server).post('/chat').set('x-request-id', 'r-transient').send(body);
    expect(res.status).toBe(200);
    expect(res.body.attempts).toBe(2);
    expect(fake.requestsTo(CHAT)).toHaveLength(2);
    expect(res.body.openai_request_id).toBe(fake.requestsTo(CHAT)[1].requestId);
    expect(h.logger.records('openai call').find((l) => l.request_id === 'r-transient')).toMatchObject({
      retries: 1,
      attempts: 2,
      status: 'ok',
    });
  });

  it('400 is not retried; the upstream code goes to the log, not to the client', async () => {
    fake.fault({ path: CHAT, status: 400, errorCode: 'invalid_value' });
    const res = await request(h.server).post('/chat').set('x-request-id', 'r400').send(body);
    expect(res.status).toBe(400);
    expect(res.body.message).toBe('The model provider rejected the request');
    expect(res.text).not.toContain('invalid_value');
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    const line = h.logger.records('openai call failed').find((l) => l.request_id === 'r400');
    expect(line).toMatchObject({ status: 400, upstream_status: 400, upstream_code: 'invalid_value' });
  });

  it('429 insufficient_quota is not retried: 502 upstream_quota_exceeded', async () => {
    fake.fault({ path: CHAT, status: 429, errorCode: 'insufficient_quota', retryAfterMs: 10 });
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(502);
    expect(res.body.error).toBe('upstream_quota_exceeded');
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it('429 rate_limit_exceeded is retried', async () => {
    fake.fault({ path: CHAT, status: 429, times: 2 });
    await request(h.server).post('/chat').send(body).expect(200);
    expect(fake.requestsTo(CHAT)).toHaveLength(3);
  });

  it('a dropped connection is retried', async () => {
    fake.fault({ path: CHAT, drop: true, times: 1 });
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(200);
    expect(res.body.content).toBe('Echo: retry me');
    expect(fake.requestsTo(CHAT)).toHaveLength(2);
  });

  it('connections that keep dropping: 502 after maxRetries + 1 attempts', async () => {
    fake.fault({ path: CHAT, drop: true });
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(502);
    expect(res.body.error).toBe('upstream_error');
    expect(fake.requestsTo(CHAT)).toHaveLength(3);
  });

  it('honours retry-after-ms: 200', async () => {
    fake.fault({ path: CHAT, status: 429, retryAfterMs: 200, times: 1 });
    await request(h.server).post('/chat').send(body).expect(200);
    const [gap] = gaps(fake);
    expect(gaps(fake)).toHaveLength(1);
    expect(gap).toBeGreaterThanOrEqual(190);
    expect(gap).toBeLessThan(1_500);
  });

  it('honours retry-after in seconds', async () => {
    fake.fault({ path: CHAT, status: 503, retryAfter: 1, times: 1 });
    await request(h.server).post('/chat').send(body).expect(200);
    const [gap] = gaps(fake);
    expect(gap).toBeGreaterThanOrEqual(990);
    expect(gap).toBeLessThan(2_500);
  });

  it('without a server-directed wait, backs off within initialDelayMs..maxDelayMs (small)', async () => {
    fake.fault({ path: CHAT, status: 500 });
    await request(h.server).post('/chat').send(body).expect(502);
    for (const gap of gaps(fake)) expect(gap).toBeLessThan(500);
  });

  it('a server-directed wait over retry.maxRetryAfterMs is not slept: 429 upstream_rate_limited at once, the wait passed on', async () => {
    capped = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, { retry: { maxRetries: 2, maxRetryAfterMs: 150 } }),
    );
    fake.fault({ path: CHAT, status: 429, retryAfter: 120 });
    const sent = performance.now();
    const res = await request(capped.server).post('/chat').send(body);
    expect(res.status).toBe(429);
    expect(res.body.error).toBe('upstream_rate_limited');
    expect(res.body.retry_after).toBe(120);
    expect(res.headers['retry-after']).toBe('120');
    // One attempt, no retry a minute before the provider said, and no 60 s sleep holding the client.
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    expect(performance.now() - sent).toBeLessThan(5_000);
  });

  it('a wait over the cap goes to the next fallback model at once', async () => {
    fake.fault({ path: CHAT, model: 'gpt-4o-mini-2024-07-18', status: 429, retryAfterMs: 90_000 });
    const r = await capped.openai.chat({ ...body, model: 'gpt-4o-mini-2024-07-18' } as never, {
      fallbacks: ['gpt-4o-2024-08-06'],
    });
    expect(r.model).toBe('gpt-4o-2024-08-06');
    expect(r.fallbackFrom).toBe('gpt-4o-mini-2024-07-18');
    expect(fake.requestsTo(CHAT).map((q) => q.model)).toEqual([
      'gpt-4o-mini-2024-07-18',
      'gpt-4o-2024-08-06',
    ]);
    expect(gaps(fake)[0]).toBeLessThan(1_000);
  });

  it('the deadline stops retrying: a server-directed wait past it fails fast instead of sleeping', async () => {
    short = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        retry: { maxRetries: 3 },
        timeouts: { attemptMs: 300, deadlineMs: 600 },
      }),
    );
    fake.fault({ path: CHAT, status: 503, retryAfterMs: 2_000 });
    const res = await request(short.server).post('/chat').send(body);
    const answeredAt = performance.now();
    expect(res.status).toBe(502);
    expect(res.headers['retry-after']).toBe('2');
    const attempts = fake.requestsTo(CHAT);
    expect(attempts).toHaveLength(1);
    // Answered well before the 2 s the server asked for (and before the 600 ms deadline).
    expect(answeredAt - attempts[0].at).toBeLessThan(600);
  });

  it('the deadline bounds hanging attempts: no attempt starts after it', async () => {
    fake.fault({ path: CHAT, hang: true });
    const res = await request(short.server).post('/chat').send(body);
    const answeredAt = performance.now();
    expect(res.status).toBe(504);
    expect(res.body.error).toBe('upstream_timeout');
    const attempts = fake.requestsTo(CHAT);
    expect(attempts.length).toBeGreaterThanOrEqual(2); // 300 ms attempt, then the rest of the 600 ms deadline
    expect(attempts.length).toBeLessThanOrEqual(3);
    expect(answeredAt - attempts[0].at).toBeLessThan(1_200);
  });
});
