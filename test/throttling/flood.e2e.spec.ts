import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { sharedRedisUrl } from '../support/redis.js';
import { PLATFORMS, startSampleApp, type SampleAppHandle } from '../support/sample-app.js';
import {
  chatBody,
  flood,
  jsonHeaders,
  listen,
  uniqueSampleUsers,
  type FloodResult,
} from './throttling-fixture.js';

const redisUrl = sharedRedisUrl();

/** Every refused answer is a proper 429 of the contract; returns the counts. */
function tally(results: FloodResult[], ids: (i: number) => string) {
  const ok = results.filter((r) => r.status === 200);
  const limited = results.filter((r) => r.status === 429);
  results.forEach((r, i) => {
    if (r.status !== 429) return;
    expect(r.body).toMatchObject({ statusCode: 429, error: 'rate_limit_exceeded', request_id: ids(i) });
    const retryAfter = Number(r.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(r.headers.get('x-ratelimit-remaining')).toBe('0');
  });
  for (const r of ok) expect(r.body.content).toMatch(/^Echo: /);
  return { ok: ok.length, limited: limited.length, other: results.length - ok.length - limited.length };
}

describe.each(PLATFORMS)('1,000 concurrent requests of one user on %s', (platform) => {
  let fake: FakeOpenAIServer;
  const apps: SampleAppHandle[] = [];
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterEach(async () => {
    while (apps.length) await apps.pop()!.close();
    fake.reset();
  });
  afterAll(async () => {
    await fake.close();
  });

  async function floodSample(env: Record<string, string>) {
    const users = uniqueSampleUsers();
    const h = await startSampleApp(platform, fake, { RATE_LIMIT_RPM: '5', ...users.env, ...env });
    apps.push(h);
    const base = await listen(h.app);
    const results = await flood(`${base}/chat`, 1_000, (i) => ({
      method: 'POST',
      headers: jsonHeaders('alice-token', { 'x-request-id': `flood-${i}` }),
      body: chatBody(`message ${i}`),
    }));
    return tally(results, (i) => `flood-${i}`);
  }

  it('in memory: exactly 5 answered, 995 refused, 5 upstream calls', async () => {
    expect(await floodSample({})).toEqual({ ok: 5, limited: 995, other: 0 });
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(5);
  });

  it.skipIf(!redisUrl)('on Redis: exactly 5 answered, 995 refused, 5 upstream calls', async () => {
    expect(await floodSample({ REDIS_URL: redisUrl })).toEqual({ ok: 5, limited: 995, other: 0 });
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(5);
  });

  it.skipIf(!redisUrl)('two instances sharing one Redis hold one limit across both', async () => {
    const users = uniqueSampleUsers();
    const env = { RATE_LIMIT_RPM: '5', REDIS_URL: redisUrl, ...users.env };
    const a = await startSampleApp(platform, fake, env);
    apps.push(a);
    const b = await startSampleApp(platform, fake, env);
    apps.push(b);
    const bases = [await listen(a.app), await listen(b.app)];
    const split = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        flood(`${bases[i % 2]}/chat`, 1, () => ({
          method: 'POST',
          headers: jsonHeaders(i % 3 === 0 ? 'bob-token' : 'alice-token', { 'x-request-id': `two-${i}` }),
          body: chatBody(`message ${i}`),
        })).then((r) => ({ ...r[0], instance: i % 2, user: i % 3 === 0 ? 'bob' : 'alice' })),
      ),
    );
    const counts = tally(split, (i) => `two-${i}`);
    // alice and bob: 5 each, across both instances
    expect(counts).toEqual({ ok: 10, limited: 190, other: 0 });
    for (const user of ['alice', 'bob'])
      expect(split.filter((r) => r.user === user && r.status === 200)).toHaveLength(5);
    // both instances took part in refusing
    for (const instance of [0, 1])
      expect(split.filter((r) => r.instance === instance && r.status === 429).length).toBeGreaterThan(50);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(10);
  });
});
