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

const msg = (extra: Record<string, unknown> = {}) => ({
  messages: [{ role: 'user', content: 'hi' }],
  ...extra,
});

describe.each(PLATFORMS)('model policy on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let dev: FixtureHandle;
  let prod: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    dev = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        environment: 'development',
        models: {
          aliases: { chat: 'gpt-4o-2024-08-06' },
          allow: ['gpt-4o-2024-08-06', 'gpt-4o-mini-2024-07-18', 'gpt-4o'],
        },
        maxTokens: { cap: 100 },
      }),
    );
  });
  afterAll(async () => {
    await dev.close();
    await prod?.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });
  const upstream = () => fake.requestsTo('/v1/chat/completions');

  it('resolves an alias: the upstream sees the snapshot', async () => {
    const res = await request(dev.server)
      .post('/chat')
      .send(msg({ model: 'chat' }));
    expect(res.status).toBe(200);
    expect(res.body.model).toBe('gpt-4o-2024-08-06');
    expect(upstream().map((r) => r.model)).toEqual(['gpt-4o-2024-08-06']);
  });

  it('uses the default model when the request names none', async () => {
    await request(dev.server).post('/chat').send(msg()).expect(200);
    expect(upstream()[0].model).toBe('gpt-4o-mini-2024-07-18');
  });

  it('a model outside the allow-list: 400 model_not_allowed, no upstream call', async () => {
    const res = await request(dev.server)
      .post('/chat')
      .set('x-request-id', 'not-allowed-1')
      .send(msg({ model: 'gpt-3.5-turbo-0125' }));
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({
      statusCode: 400,
      error: 'model_not_allowed',
      request_id: 'not-allowed-1',
    });
    expect(fake.requests).toHaveLength(0);
  });

  it('pinning warn: an unpinned model is called, and the warning is logged once per model', async () => {
    const warnings = () =>
      dev.logger.lines.filter(
        (l) =>
          l.level === 'warn' &&
          typeof l.message === 'string' &&
          l.message.includes('"gpt-4o" is not a pinned snapshot'),
      );
    const before = warnings().length;
    expect(before).toBeLessThanOrEqual(1);
    await request(dev.server)
      .post('/chat')
      .send(msg({ model: 'gpt-4o' }))
      .expect(200);
    await request(dev.server)
      .post('/chat')
      .send(msg({ model: 'gpt-4o' }))
      .expect(200);
    await request(dev.server)
      .post('/chat')
      .send(msg({ model: 'gpt-4o' }))
      .expect(200);
    expect(warnings()).toHaveLength(1);
    expect(upstream().map((r) => r.model)).toEqual(['gpt-4o', 'gpt-4o', 'gpt-4o']);
  });

  it('max_tokens above the cap is clamped: the upstream sees the cap, in the field the request used', async () => {
    await request(dev.server)
      .post('/chat')
      .send(msg({ max_tokens: 5_000 }))
      .expect(200);
    await request(dev.server)
      .post('/chat')
      .send(msg({ max_completion_tokens: 5_000 }))
      .expect(200);
    const [a, b] = upstream().map((r) => r.body);
    expect(a.max_tokens).toBe(100);
    expect(a.max_completion_tokens).toBeUndefined();
    expect(b.max_completion_tokens).toBe(100);
    expect(b.max_tokens).toBeUndefined();
  });

  it('a request asking less than the cap keeps its value', async () => {
    await request(dev.server)
      .post('/chat')
      .send(msg({ max_tokens: 7 }))
      .expect(200);
    expect(upstream()[0].body.max_tokens).toBe(7);
  });

  it('a request asking for no limit gets the default (the cap)', async () => {
    await request(dev.server).post('/chat').send(msg()).expect(200);
    const sent = upstream()[0].body;
    expect(sent.max_completion_tokens).toBe(100);
    expect(sent.max_tokens).toBeUndefined();
  });

  it('an invalid max_tokens is a 400 without an upstream call', async () => {
    const res = await request(dev.server)
      .post('/chat')
      .send(msg({ max_tokens: 0 }));
    expect(res.status).toBe(400);
    expect(res.body.error).toBe('invalid_request');
    expect(fake.requests).toHaveLength(0);
  });

  it('per-call fallbacks obey the allow-list too: 400 before any upstream call', async () => {
    await expect(
      dev.openai.chat(msg() as never, { fallbacks: ['gpt-3.5-turbo-0125'] }),
    ).rejects.toMatchObject({
      status: 400,
      response: expect.objectContaining({ error: 'model_not_allowed' }),
    });
    expect(fake.requests).toHaveLength(0);
  });

  it('per-call fallbacks resolve aliases', async () => {
    fake.fault({ path: '/v1/chat/completions', model: 'gpt-4o-mini-2024-07-18', status: 500 });
    const r = await dev.openai.chat(msg() as never, { fallbacks: ['chat'], maxRetries: 0 });
    expect(r.model).toBe('gpt-4o-2024-08-06');
    expect(upstream().map((x) => x.model)).toEqual(['gpt-4o-mini-2024-07-18', 'gpt-4o-2024-08-06']);
  });

  describe('production: pinning enforced, overCap reject', () => {
    beforeAll(async () => {
      prod = await startFixtureApp(
        platform,
        fixtureOptions(fake.baseURL, TEST_API_KEY, {
          environment: 'production',
          models: { default: 'fast', aliases: { fast: 'gpt-4o-mini-2024-07-18' } },
          maxTokens: { cap: 100, default: 40, overCap: 'reject' },
        }),
      );
    });

    it('an unpinned model is a 400 at call time, with no upstream call', async () => {
      const res = await request(prod.server)
        .post('/chat')
        .send(msg({ model: 'gpt-4o' }));
      expect(res.status).toBe(400);
      expect(res.body.error).toBe('model_not_allowed');
      expect(res.body.message).toContain('gpt-4o');
      expect(fake.requests).toHaveLength(0);
    });

    it('an unpinned per-call fallback is a 400 at call time, with no upstream call', async () => {
      fake.fault({ path: '/v1/chat/completions', status: 500 });
      await expect(prod.openai.chat(msg() as never, { fallbacks: ['gpt-4o'] })).rejects.toMatchObject({
        status: 400,
        response: expect.objectContaining({ error: 'model_not_allowed' }),
      });
      expect(fake.requests).toHaveLength(0);
    });

    it('the default, an alias and its snapshot are called', async () => {
      await request(prod.server).post('/chat').send(msg()).expect(200);
      await request(prod.server)
        .post('/chat')
        .send(msg({ model: 'fast' }))
        .expect(200);
      await request(prod.server)
        .post('/chat')
        .send(msg({ model: 'gpt-4o-mini-2024-07-18' }))
        .expect(200);
      expect(upstream().map((r) => r.model)).toEqual([
        'gpt-4o-mini-2024-07-18',
        'gpt-4o-mini-2024-07-18',
        'gpt-4o-mini-2024-07-18',
      ]);
    });

    it('a pinned model the app did not configure is a 400 (requested: configured), with no upstream call', async () => {
      const res = await request(prod.server)
        .post('/chat')
        .send(msg({ model: 'gpt-4o-2024-08-06' }));
      expect(res.status).toBe(400);
      expect(res.body.error).toBe('model_not_allowed');
      expect(res.body.message).toContain('not one of the configured models');
      expect(fake.requests).toHaveLength(0);
    });

    it('max_tokens above the cap is rejected with 400 max_tokens_above_cap, with no upstream call', async () => {
      const res = await request(prod.server)
        .post('/chat')
        .send(msg({ max_tokens: 101 }));
      expect(res.status).toBe(400);
      expect(res.body.error).toBe('max_tokens_above_cap');
      expect(fake.requests).toHaveLength(0);
    });

    it('at the cap is accepted; none gets the configured default', async () => {
      await request(prod.server)
        .post('/chat')
        .send(msg({ max_tokens: 100 }))
        .expect(200);
      await request(prod.server).post('/chat').send(msg()).expect(200);
      const [a, b] = upstream().map((r) => r.body);
      expect(a.max_tokens).toBe(100);
      expect(b.max_completion_tokens).toBe(40);
    });
  });
});
