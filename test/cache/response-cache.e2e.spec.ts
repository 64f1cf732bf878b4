import request from 'supertest';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { sharedRedisUrl } from '../support/redis.js';
import { PLATFORMS, auth, startSampleApp, type SampleAppHandle } from '../support/sample-app.js';

const CHAT = '/v1/chat/completions';
const deterministic = (content: string, extra: Record<string, unknown> = {}) => ({
  messages: [{ role: 'user', content }],
  temperature: 0,
  max_tokens: 50,
  ...extra,
});

describe.each(PLATFORMS)('response cache (CACHE_TTL_S) on %s, in memory', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    // 70 tokens a minute: one call reserves prompt + max_tokens (~60) and settles to ~15, so a second uncached call (15 + 60) would be a 429.
    h = await startSampleApp(platform, fake, {
      CACHE_TTL_S: '60',
      MODERATION: 'off',
      RATE_LIMIT_RPM: '10',
      RATE_LIMIT_TPM: '70',
    });
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  it('answers an identical temperature-0 request from the cache: x-cache hit, cost 0, no upstream call, no token use', async () => {
    const body = deterministic(`cache me ${platform}`);
    const first = await request(h.server).post('/chat').set(auth()).send(body);
    expect(first.status).toBe(200);
    expect(first.headers['x-cache']).toBeUndefined();
    expect(first.body.cost_usd).toBeGreaterThan(0);

    const second = await request(h.server).post('/chat').set(auth()).send(body);
    expect(second.status).toBe(200);
    expect(second.headers['x-cache']).toBe('hit');
    expect(second.body.cost_usd).toBe(0);
    expect(second.body.content).toBe(first.body.content);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    // It counts against the request limit (the guard ran) ...
    expect(Number(second.headers['x-ratelimit-remaining'])).toBe(
      Number(first.headers['x-ratelimit-remaining']) - 1,
    );
    // ... and not against the token limit: a third identical request is still served.
    const third = await request(h.server).post('/chat').set(auth()).send(body);
    expect(third.status).toBe(200);
    expect(third.headers['x-cache']).toBe('hit');
  });

  it('is not counted as upstream usage', async () => {
    const body = deterministic(`usage check ${platform}`);
    const before = (await request(h.server).get('/usage').set(auth('bob-token'))).body;
    await request(h.server).post('/chat').set(auth('bob-token')).send(body).expect(200);
    await request(h.server).post('/chat').set(auth('bob-token')).send(body).expect(200);
    const after = (await request(h.server).get('/usage').set(auth('bob-token'))).body;
    expect(after.requests - before.requests).toBe(1);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it('does not cache non-deterministic requests', async () => {
    const body = deterministic(`warm ${platform}`, { temperature: 0.7, max_tokens: 5 });
    await request(h.server).post('/chat').set(auth()).send(body).expect(200);
    const again = await request(h.server).post('/chat').set(auth()).send(body);
    expect(again.headers['x-cache']).toBeUndefined();
    expect(fake.requestsTo(CHAT)).toHaveLength(2);
  });
});

const redisUrl = sharedRedisUrl();
describe.skipIf(!redisUrl)('response cache shared by two instances on Redis', () => {
  let fake: FakeOpenAIServer;
  let a: SampleAppHandle;
  let b: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    const env = { CACHE_TTL_S: '60', MODERATION: 'off', REDIS_URL: redisUrl };
    a = await startSampleApp('express', fake, env);
    b = await startSampleApp('fastify', fake, env);
  });
  afterAll(async () => {
    await a.close();
    await b.close();
    await fake.close();
  });
  afterEach(() => fake.reset());

  it('an answer cached by one instance is a hit on the other, for another user too', async () => {
    const body = deterministic(`shared ${Date.now()} ${Math.random()}`);
    await request(a.server).post('/chat').set(auth('alice-token')).send(body).expect(200);
    const hit = await request(b.server).post('/chat').set(auth('bob-token')).send(body);
    expect(hit.status).toBe(200);
    expect(hit.headers['x-cache']).toBe('hit');
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });
});
