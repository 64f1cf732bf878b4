import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UsageService, hashUserId } from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { CHAT, MODERATIONS, RESPONSES, ResponsesFixtureController } from './responses-fixture.js';

const SAFE = "Sorry, I can't help with that.";

describe.each(PLATFORMS)('POST /responses through the call pipeline on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({
      reply: (req) => {
        const last = req.messages.at(-1) as { content?: unknown } | undefined;
        const text =
          typeof last?.content === 'string'
            ? last.content
            : Array.isArray(last?.content)
              ? (last.content as Array<{ text?: string }>).map((p) => p.text ?? '').join('\n')
              : '';
        // A reply the output moderation flags, when asked for.
        return text.includes('SAY_BAD') ? 'here you go FLAG_ME' : `Echo: ${text}`;
      },
    });
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        models: {
          aliases: { chat: 'gpt-4o-2024-08-06' },
          allow: ['gpt-4o-2024-08-06', 'gpt-4o-mini-2024-07-18', 'gpt-4o'],
          fallbacks: ['gpt-4o-2024-08-06'],
        },
        maxTokens: { cap: 100 },
        input: { maxMessages: 4, maxChars: 200 },
        identity: { field: 'safety_identifier', salt: 'pepper' },
        retry: { maxRetries: 1 },
        cache: { ttlMs: 60_000 },
        moderation: { onError: 'fail-closed' },
      }),
      { controllers: [ResponsesFixtureController] },
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
  });
  const upstream = () => fake.requestsTo(RESPONSES);
  const post = (body: object, path = '/responses') => request(h.server).post(path).send(body);

  describe('prepare: model policy, output cap, input caps, identity, store', () => {
    it('resolves an alias: the upstream sees the snapshot, the result names it', async () => {
      const res = await post({ model: 'chat', input: 'hi' });
      expect(res.status).toBe(200);
      expect(res.body.model).toBe('gpt-4o-2024-08-06');
      expect(res.body.output_text).toBe('Echo: hi');
      expect(upstream().map((r) => r.model)).toEqual(['gpt-4o-2024-08-06']);
    });

    it('the default model when the request names none', async () => {
      await post({ input: 'hi' }).expect(200);
      expect(upstream()[0].model).toBe('gpt-4o-mini-2024-07-18');
    });

    it('a model outside the allow-list: 400 model_not_allowed, no upstream call', async () => {
      const res = await request(h.server)
        .post('/responses')
        .set('x-request-id', 'resp-not-allowed')
        .send({ model: 'gpt-3.5-turbo-0125', input: 'hi' });
      expect(res.status).toBe(400);
      expect(res.body).toMatchObject({
        statusCode: 400,
        error: 'model_not_allowed',
        request_id: 'resp-not-allowed',
      });
      expect(fake.requests).toHaveLength(0);
    });

    it('pinning warn: an unpinned model is called and warned about once', async () => {
      const warnings = () =>
        h.logger.lines.filter(
          (l) =>
            l.level === 'warn' &&
            typeof l.message === 'string' &&
            l.message.includes('"gpt-4o" is not a pinned snapshot'),
        );
      const before = warnings().length;
      expect(before).toBeLessThanOrEqual(1);
      await post({ model: 'gpt-4o', input: 'a' }).expect(200);
      await post({ model: 'gpt-4o', input: 'b' }).expect(200);
      expect(warnings()).toHaveLength(1);
      expect(upstream().map((r) => r.model)).toEqual(['gpt-4o', 'gpt-4o']);
    });

    it('max_output_tokens above the cap is clamped; below it is kept; absent gets the default', async () => {
      await post({ input: 'hi', max_output_tokens: 5_000 }).expect(200);
      await post({ input: 'hi', max_output_tokens: 7 }).expect(200);
      await post({ input: 'hi' }).expect(200);
      const [a, b, c] = upstream().map((r) => r.body);
      expect(a.max_output_tokens).toBe(100);
      expect(b.max_output_tokens).toBe(7);
      expect(c.max_output_tokens).toBeGreaterThan(0);
      expect(c.max_output_tokens).toBeLessThanOrEqual(100);
      for (const body of [a, b, c]) {
        expect(body.max_tokens).toBeUndefined();
        expect(body.max_completion_tokens).toBeUndefined();
      }
    });

    it('a non-positive max_output_tokens: 400, no upstream call', async () => {
      const res = await post({ input: 'hi', max_output_tokens: 0 });
      expect(res.status).toBe(400);
      expect(upstream()).toHaveLength(0);
    });

    it('an empty input: 400 invalid_request, no upstream call', async () => {
      const res = await post({ input: '' });
      expect(res.status).toBe(400);
      expect(res.body.error).toBe('invalid_request');
      expect(upstream()).toHaveLength(0);
    });

    it('input caps count instructions and input together: 413, no upstream call', async () => {
      // 150 + 100 characters: each fits maxChars (200) alone, not together.
      const ok = await post({ instructions: 'i'.repeat(150), input: 'short' });
      expect(ok.status).toBe(200);
      const tooLong = await post({ instructions: 'i'.repeat(150), input: 'x'.repeat(100) });
      expect(tooLong.status).toBe(413);
      expect(tooLong.body.statusCode).toBe(413);
      expect(tooLong.body.error).toBe('input_too_large');
      const tooMany = await post({
        input: Array.from({ length: 5 }, (_, i) => ({ role: 'user', content: `m${i}` })),
      });
      expect(tooMany.status).toBe(413);
      expect(tooMany.body.error).toBe('input_too_large');
      expect(upstream()).toHaveLength(1);
    });

    it('the end user goes upstream hashed in safety_identifier, never in clear', async () => {
      await request(h.server).post('/responses').set('x-user', 'alice@example.com').send({ input: 'hi' });
      const body = upstream()[0].body;
      expect(body.safety_identifier).toBe(hashUserId('alice@example.com', 'pepper'));
      expect(body.safety_identifier).toMatch(/^[0-9a-f]{64}$/);
      expect(JSON.stringify(body)).not.toContain('alice');
      expect(body.user).toBeUndefined();
    });

    it('store: false is sent by default; a request that sets store keeps it', async () => {
      await post({ input: 'default' }).expect(200);
      await post({ input: 'kept', store: true }).expect(200);
      await post({ input: 'explicit', store: false }).expect(200);
      expect(upstream().map((r) => r.body.store)).toEqual([false, true, false]);
    });
  });

  describe('execute: retries, fallbacks, timeouts', () => {
    it('a 429 with retry-after-ms is retried after the server-directed wait', async () => {
      fake.fault({ path: RESPONSES, status: 429, retryAfterMs: 300, times: 1 });
      const res = await post({ input: 'retry me' });
      expect(res.status).toBe(200);
      expect(res.body.attempts).toBe(2);
      expect(res.body.output_text).toBe('Echo: retry me');
      const [first, second] = upstream();
      expect(second.at - first.at).toBeGreaterThanOrEqual(250);
      expect(second.at - first.at).toBeLessThan(5_000);
    });

    it('a 400 from the upstream is not retried', async () => {
      fake.fault({ path: RESPONSES, status: 400, times: 1 });
      const res = await post({ input: 'bad' });
      expect(res.status).toBe(400);
      expect(upstream()).toHaveLength(1);
    });

    it('the primary failing after retries falls back to the next model', async () => {
      fake.fault({ path: RESPONSES, model: 'gpt-4o-mini-2024-07-18', status: 500 });
      const res = await post({ input: 'fall back' });
      expect(res.status).toBe(200);
      expect(res.body.model).toBe('gpt-4o-2024-08-06');
      expect(res.body.fallback_from).toBe('gpt-4o-mini-2024-07-18');
      expect(res.body.output_text).toBe('Echo: fall back');
      const models = upstream().map((r) => r.model);
      expect(models.at(-1)).toBe('gpt-4o-2024-08-06');
      expect(models.filter((m) => m === 'gpt-4o-mini-2024-07-18')).toHaveLength(2);
    });

    it('an attempt that takes too long: 504 upstream_timeout after the retries', async () => {
      fake.fault({ path: RESPONSES, hang: true });
      const started = performance.now();
      const res = await request(h.server)
        .post('/responses')
        .set('x-attempt-ms', '200')
        .set('x-max-retries', '1')
        .send({ model: 'gpt-4o', input: 'slow' });
      expect(res.status).toBe(504);
      expect(res.body.error).toBe('upstream_timeout');
      // the fallback too timed out, or it was not tried: every attempt was bounded
      expect(performance.now() - started).toBeLessThan(5_000);
      expect(upstream().length).toBeGreaterThanOrEqual(2);
    });
  });

  describe('response cache', () => {
    it('an identical temperature-0 request is served from the cache: cached, x-cache hit, no upstream call', async () => {
      const body = { input: `cache me ${platform}`, temperature: 0, max_output_tokens: 20 };
      const first = await post(body);
      expect(first.status).toBe(200);
      expect(first.body.cached).toBe(false);
      expect(first.headers['x-cache']).toBeUndefined();
      const second = await post(body);
      expect(second.status).toBe(200);
      expect(second.body.cached).toBe(true);
      expect(second.headers['x-cache']).toBe('hit');
      expect(second.body.output_text).toBe(first.body.output_text);
      expect(second.body.cost_usd).toBe(0);
      expect(second.body.usage.total_tokens).toBe(0);
      expect(upstream()).toHaveLength(1);
    });

    it('a non-deterministic request is not cached', async () => {
      const body = { input: `warm ${platform}`, temperature: 0.7, max_output_tokens: 20 };
      await post(body).expect(200);
      const again = await post(body);
      expect(again.body.cached).toBe(false);
      expect(upstream()).toHaveLength(2);
    });

    it('a responses entry is not a hit for the same text asked through chat', async () => {
      const text = `both endpoints ${platform}`;
      await post({ input: text, temperature: 0, max_output_tokens: 20 }).expect(200);
      await request(h.server)
        .post('/chat')
        .send({ messages: [{ role: 'user', content: text }], temperature: 0, max_tokens: 20 })
        .expect(200);
      expect(upstream()).toHaveLength(1);
      expect(fake.requestsTo(CHAT)).toHaveLength(1);
    });
  });

  describe('moderation', () => {
    const expectFlagged = (res: request.Response, categories: string[]) => {
      expect(res.status).toBe(422);
      expect(res.body).toEqual({
        statusCode: 422,
        error: 'input_flagged',
        message: expect.any(String),
        request_id: res.headers['x-request-id'],
        categories,
      });
      expect(res.text).not.toContain('FLAG_ME');
    };

    it('a flagged string input: 422 with the categories, no responses call', async () => {
      const res = await post({ input: 'you are awful FLAG_ME' }, '/responses/moderated');
      expectFlagged(res, ['harassment']);
      expect(fake.requestsTo(MODERATIONS)).toHaveLength(1);
      expect(upstream()).toHaveLength(0);
    });

    it('a flagged message list with input_text parts: 422, every category named', async () => {
      const res = await post(
        {
          input: [
            { role: 'user', content: [{ type: 'input_text', text: 'first part' }] },
            {
              role: 'user',
              content: [
                { type: 'input_text', text: 'KILL_ME_NOW' },
                { type: 'input_text', text: 'and FLAG_ME' },
              ],
            },
          ],
        },
        '/responses/moderated',
      );
      expectFlagged(res, ['harassment', 'self-harm', 'self-harm/intent']);
      expect(upstream()).toHaveLength(0);
    });

    it('a clean message list: the user texts go in one moderations call, then the response', async () => {
      const res = await post(
        {
          instructions: 'be terse',
          input: [
            { role: 'user', content: [{ type: 'input_text', text: 'lovely day' }] },
            { role: 'user', content: 'is it not' },
          ],
        },
        '/responses/moderated',
      );
      expect(res.status).toBe(200);
      expect(res.body.output_text).toBe('Echo: is it not');
      const mods = fake.requestsTo(MODERATIONS);
      expect(mods).toHaveLength(1);
      expect(mods[0].body.input).toEqual(['lovely day', 'is it not']);
      expect(upstream()).toHaveLength(1);
    });

    it('output moderation: a flagged output_text is replaced by the safe message, and still billed', async () => {
      const res = await post({ input: 'please SAY_BAD things' }, '/responses/output-moderated');
      expect(res.status).toBe(200);
      expect(res.body.output_text).toBe(SAFE);
      expect(res.body.output_moderation).toEqual({ flagged: true, categories: ['harassment'] });
      expect(res.body.usage.completion_tokens).toBeGreaterThan(0);
      expect(res.text).not.toContain('FLAG_ME');
      expect(upstream()).toHaveLength(1);
      const clean = await post({ input: 'nice things' }, '/responses/output-moderated');
      expect(clean.body.output_text).toBe('Echo: nice things');
      expect(clean.body.output_moderation).toEqual({ flagged: false, categories: [] });
    });
  });

  describe('usage', () => {
    it('normalizes usage: input_tokens as prompt_tokens, output_tokens as completion_tokens', async () => {
      const res = await post({ instructions: 'be brief', input: 'count me' });
      expect(res.status).toBe(200);
      const sent = upstream()[0].body;
      const expected = countChatPromptTokens([
        { role: 'system', content: sent.instructions },
        { role: 'user', content: sent.input },
      ]);
      expect(res.body.usage).toMatchObject({
        prompt_tokens: expected,
        completion_tokens: expect.any(Number),
        estimated: false,
      });
      expect(res.body.usage.total_tokens).toBe(
        res.body.usage.prompt_tokens + res.body.usage.completion_tokens,
      );
      expect(res.body.cost_usd).toBeGreaterThan(0);
    });

    it('the ledger counts responses calls together with chat calls, per user', async () => {
      const user = `ledger-${platform}`;
      const a = await request(h.server).post('/responses').set('x-user', user).send({ input: 'one' });
      const b = await request(h.server)
        .post('/responses')
        .set('x-user', user)
        .send({ instructions: 'terse', input: 'two three' });
      const c = await request(h.server)
        .post('/chat')
        .set('x-user', user)
        .send({ messages: [{ role: 'user', content: 'four' }] });
      for (const r of [a, b, c]) expect(r.status).toBe(200);
      const usage = h.app.get(UsageService);
      await usage.flush();
      const totals = await usage.totals(user);
      expect(totals.requests).toBe(3);
      expect(totals.prompt_tokens).toBe(
        a.body.usage.prompt_tokens + b.body.usage.prompt_tokens + c.body.usage.prompt_tokens,
      );
      expect(totals.completion_tokens).toBe(
        a.body.usage.completion_tokens + b.body.usage.completion_tokens + c.body.usage.completion_tokens,
      );
      expect(a.body.cost_usd).toBeGreaterThan(0);
      expect(totals.cost_usd).toBeCloseTo(a.body.cost_usd + b.body.cost_usd + c.body.cost_usd, 12);
    });

    it('a reply without usage is estimated, flagged, and still counted', async () => {
      const user = `estimate-${platform}`;
      fake.fault({ path: RESPONSES, omitUsage: true, times: 1 });
      const res = await request(h.server)
        .post('/responses')
        .set('x-user', user)
        .send({ input: 'one two three' });
      expect(res.status).toBe(200);
      expect(res.body.usage.estimated).toBe(true);
      expect(res.body.usage.prompt_tokens).toBeGreaterThan(0);
      expect(res.body.usage.completion_tokens).toBeGreaterThan(0);
      const usage = h.app.get(UsageService);
      await usage.flush();
      const totals = await usage.totals(user);
      expect(totals.requests).toBe(1);
      expect(totals.prompt_tokens + totals.completion_tokens).toBe(res.body.usage.total_tokens);
    });
  });
});
