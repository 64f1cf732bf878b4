import { performance } from 'node:perf_hooks';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { PLATFORMS, auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';

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
    const res = await request(h.server).post('/chat').set(auth()).set('x-request-id', 'hang-1').send(userMessage('wait'));
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
    expect(h.logger.records('openai call failed').find((l) => l.request_id === 'hang-1')).toMatchObject({ status: 504, error: 'upstream_timeout', attempts: 2 });
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

  it('a stream whose headers never come: 504 JSON before the first byte', async () => {
    fake.fault({ path: CHAT, hang: true });
    const res = await request(h.server).post('/chat/stream').set(auth()).send(userMessage('wait'));
    expect(res.status).toBe(504);
    expect(res.headers['content-type']).toContain('application/json');
    expect(res.body.error).toBe('upstream_timeout');
  });
});
