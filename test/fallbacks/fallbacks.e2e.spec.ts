import { performance } from 'node:perf_hooks';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  sseEvents,
  sseText,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';

const CHAT = '/v1/chat/completions';
const PRIMARY = 'gpt-4o-2024-08-06';
const FB1 = 'gpt-4o-mini-2024-07-18';
const FB2 = 'gpt-4-0613';
const body = { messages: [{ role: 'user', content: 'fall back' }] };

describe.each(PLATFORMS)('fallbacks on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: { default: PRIMARY, fallbacks: [FB1, FB2] },
        retry: { maxRetries: 1 },
        timeouts: { attemptMs: 300, deadlineMs: 5_000 },
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
  const models = () => fake.requestsTo(CHAT).map((r) => r.model);

  it('tries the fallbacks in order, each with its retries; the result names the fallback and the primary', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 500 });
    fake.fault({ path: CHAT, model: FB1, status: 502 });
    const res = await request(h.server).post('/chat').set('x-request-id', 'fb-1').send(body);
    expect(res.status).toBe(200);
    expect(models()).toEqual([PRIMARY, PRIMARY, FB1, FB1, FB2]);
    expect(res.body).toMatchObject({
      model: FB2,
      fallback_from: PRIMARY,
      attempts: 5,
      content: 'Echo: fall back',
    });
    const line = h.logger.records('openai call').find((l) => l.request_id === 'fb-1')!;
    expect(line).toMatchObject({ model: FB2, fallback_from: PRIMARY, attempts: 5, retries: 4, status: 'ok' });
  });

  it('stops at the first fallback that answers', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 503 });
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(200);
    expect(models()).toEqual([PRIMARY, PRIMARY, FB1]);
    expect(res.body).toMatchObject({ model: FB1, fallback_from: PRIMARY });
  });

  it('a primary that answers has no fallback_from', async () => {
    const res = await request(h.server).post('/chat').send(body);
    expect(res.body).toMatchObject({ model: PRIMARY, fallback_from: null, attempts: 1 });
    expect(h.logger.records('openai call').at(-1)).not.toHaveProperty('fallback_from');
  });

  it('all models failing: 502 after every model and its retries', async () => {
    fake.fault({ path: CHAT, status: 500 });
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(502);
    expect(models()).toEqual([PRIMARY, PRIMARY, FB1, FB1, FB2, FB2]);
  });

  it('a 400 does not fall back', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 400 });
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(400);
    expect(models()).toEqual([PRIMARY]);
  });

  it("429 insufficient_quota does not fall back (the quota is the account's)", async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 429, errorCode: 'insufficient_quota' });
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(502);
    expect(models()).toEqual([PRIMARY]);
  });

  it('a primary that times out falls back', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, hang: true });
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(200);
    expect(models()).toEqual([PRIMARY, PRIMARY, FB1]);
    expect(res.body.model).toBe(FB1);
  });

  it('a server-directed wait past the deadline moves on to the fallback at once', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 429, retryAfter: 30 });
    const res = await request(h.server).post('/chat').send(body);
    const answeredAt = performance.now();
    expect(res.status).toBe(200);
    expect(models()).toEqual([PRIMARY, FB1]);
    expect(res.body).toMatchObject({ model: FB1, fallback_from: PRIMARY });
    const [first, second] = fake.requestsTo(CHAT);
    expect(second.at - first.at).toBeLessThan(1_000);
    expect(answeredAt - first.at).toBeLessThan(2_000);
  });

  it('per-call fallbacks: false disables them', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 500 });
    await expect(h.openai.chat(body as never, { fallbacks: false })).rejects.toMatchObject({ status: 502 });
    expect(models()).toEqual([PRIMARY, PRIMARY]);
  });

  it('a stream falls back before its first byte', async () => {
    fake.fault({ path: CHAT, model: PRIMARY, status: 500 });
    const res = await request(h.server).post('/chat/stream').send(body).buffer(true).parse(sseText);
    expect(res.status).toBe(200);
    const events = sseEvents(res.body as string);
    expect(events.at(-1)).toBe('[DONE]');
    expect(models()).toEqual([PRIMARY, PRIMARY, FB1]);
    expect(h.logger.records('openai call').at(-1)).toMatchObject({
      model: FB1,
      fallback_from: PRIMARY,
      status: 'ok',
    });
  });
});
