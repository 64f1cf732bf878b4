import { describe, expect, it } from 'vitest';
import { OpenAIMetricsService, UsageService, type OpenAIModuleOptions } from '../../lib/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { redisClient, sharedRedisUrl, uniquePrefix, waitFor } from '../support/redis.js';
import { redisOutageSuite } from '../support/redis-outage.js';

// A redis-server of its own (killed and restarted); the shared one only tells whether it is installed.
const available = sharedRedisUrl() !== '';
const CHAT = '/v1/chat/completions';
const day = () => new Date().toISOString().slice(0, 10);

describe.skipIf(!available)('usage ledger across a Redis outage', () => {
  const suite = redisOutageSuite();

  async function app(prefix: string, usage: OpenAIModuleOptions['usage'], commandTimeoutMs = 500) {
    const h = await startFixtureApp(
      'express',
      fixtureOptions(suite.fake.baseURL, TEST_API_KEY, {
        storage: { type: 'redis', redis: { url: suite.redis.url, keyPrefix: prefix, commandTimeoutMs } },
        moderation: { enabled: false },
        usage,
      }),
    );
    suite.apps.push(h);
    return h;
  }
  /** The ledger's raw record in Redis (fields `requests`, `prompt_tokens`, ...). */
  async function stored(prefix: string, key: string): Promise<Record<string, number>> {
    const c = redisClient(suite.redis.url);
    try {
      const raw = await c.hgetall(`${prefix}${key}`);
      return Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, Number(v)]));
    } finally {
      c.disconnect();
    }
  }
  const chat = (h: FixtureHandle, user: string, i: number) =>
    h.openai.chat({ messages: [{ role: 'user', content: `call ${i}` }] }, { user, route: 'worker' });

  it('calls settled while Redis is down are in the ledger once it is back, exactly once', async () => {
    const prefix = uniquePrefix('usage-down');
    const h = await app(prefix, { flushIntervalMs: 50 });
    const usage = h.app.get(UsageService);
    await chat(h, 'dana', 0);
    await usage.flush();
    expect((await stored(prefix, `{u:dana}:usage:${day()}`)).requests).toBe(1);

    await suite.redis.stop(); // no persistence: what was written is gone with it
    let prompt = 0;
    for (let i = 1; i <= 6; i++) prompt += (await chat(h, 'dana', i)).usage.prompt_tokens;
    await usage.flush();
    expect(usage.pendingRecords).toBe(6);
    // the retries while it is down keep the same records, nothing is dropped
    await new Promise((r) => setTimeout(r, 300));
    expect(usage.pendingRecords).toBe(6);
    expect(
      h.logger.lines.some((l) => /recording usage failed: .*records kept in process/.test(String(l.message))),
    ).toBe(true);

    await suite.redis.start();
    // no flush(): the retry timer writes them once the client has reconnected
    await waitFor('the kept records written', () => usage.pendingRecords === 0, 15_000);
    prompt += (await chat(h, 'dana', 7)).usage.prompt_tokens;
    await usage.flush();
    await usage.flush();
    const user = await stored(prefix, `{u:dana}:usage:${day()}`);
    // the call before the outage went with the restarted Redis (no persistence); the 6 of the outage and the one after are there once
    expect(user.requests).toBe(7);
    expect(user.prompt_tokens).toBe(prompt);
    expect((await stored(prefix, `{usage:project:${day()}}`)).requests).toBe(7);
    expect((await usage.totals('dana', 'day')).requests).toBe(7);
    expect(suite.fake.requestsTo(CHAT)).toHaveLength(8);
  });

  it('a write Redis ran but answered too late (a timeout) is not counted twice', async () => {
    const prefix = uniquePrefix('usage-late');
    const h = await app(prefix, { flushIntervalMs: 60_000 }, 100);
    const usage = h.app.get(UsageService);
    await chat(h, 'erin', 0);
    await usage.flush();
    await chat(h, 'erin', 1);
    await chat(h, 'erin', 2);
    const c = redisClient(suite.redis.url);
    try {
      // Writes wait 400 ms, past the 100 ms command timeout, and then run.
      await c.call('CLIENT', 'PAUSE', '400', 'WRITE');
      await usage.flush();
      expect(usage.pendingRecords).toBe(2);
    } finally {
      c.disconnect();
    }
    await new Promise((r) => setTimeout(r, 500));
    expect((await stored(prefix, `{u:erin}:usage:${day()}`)).requests).toBe(3); // ran late
    await usage.flush(); // reads the write counters back instead of writing again
    expect(usage.pendingRecords).toBe(0);
    expect((await stored(prefix, `{u:erin}:usage:${day()}`)).requests).toBe(3);
    expect((await stored(prefix, `{usage:project:${day()}}`)).requests).toBe(3);
  });

  it('past usage.maxPendingRecords the oldest records are dropped, logged and counted', async () => {
    const prefix = uniquePrefix('usage-bound');
    const h = await app(prefix, { flushIntervalMs: 60_000, maxPendingRecords: 3 });
    const usage = h.app.get(UsageService);
    await suite.redis.stop();
    for (let i = 0; i < 3; i++) await chat(h, 'finn', i);
    await usage.flush(); // the 3 fail and are kept as the oldest batch
    expect(usage.pendingRecords).toBe(3);
    for (let i = 3; i < 5; i++) await chat(h, 'finn', i); // the 4th record drops the batch of 3
    expect(usage.pendingRecords).toBe(2);
    expect(
      h.logger.lines.some((l) =>
        String(l.message).includes(
          '3 records dropped unwritten (the oldest): more than usage.maxPendingRecords (3)',
        ),
      ),
    ).toBe(true);
    expect(await h.app.get(OpenAIMetricsService).metrics()).toMatch(/openai_usage_records_dropped_total 3/);
    await suite.redis.start();
    await waitFor('Redis answering the ledger', async () => {
      await usage.flush();
      return usage.pendingRecords === 0;
    });
    expect((await stored(prefix, `{u:finn}:usage:${day()}`)).requests).toBe(2);
  });

  it('writes what is pending on shutdown, before the store closes', async () => {
    const prefix = uniquePrefix('usage-shutdown');
    const h = await app(prefix, { flushIntervalMs: 600_000 });
    for (let i = 0; i < 3; i++) await chat(h, 'gus', i);
    expect(h.app.get(UsageService).pendingRecords).toBe(3);
    expect(await stored(prefix, `{u:gus}:usage:${day()}`)).toEqual({});
    await suite.apps.pop()!.close();
    const user = await stored(prefix, `{u:gus}:usage:${day()}`);
    expect(user.requests).toBe(3);
    expect((await stored(prefix, `{usage:project:${day()}}`)).requests).toBe(3);
  });
});
