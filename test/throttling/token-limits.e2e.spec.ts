import http from 'node:http';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  OpenAIService,
  RateLimitExceededException,
  TokenReservationTooLargeException,
} from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens, countTextTokens } from '../../lib/testing/index.js';
import { waitFor } from '../support/redis.js';
import { PLATFORMS, startSampleApp, type SampleAppHandle } from '../support/sample-app.js';
import { listen, tokensUsed } from './throttling-fixture.js';

const TPM = 300;
const USERS = ['u1', 'u2', 'u3', 'u4', 'u5', 'u6', 'u7', 'u8'];
const token = (user: string) => ({ authorization: `Bearer ${user}-token` });
const messages = (content: string) => [{ role: 'user' as const, content }];
const prompt = (content: string) => countChatPromptTokens(messages(content));
/** Tokens the fake's echo reply uses when max_tokens does not cut it. */
const echo = (content: string) => countTextTokens(`Echo: ${content}`);
const LONG = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ');

describe.each(PLATFORMS)('token limits (RATE_LIMIT_TPM) on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  let base: string;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ streamChunkDelayMs: 25 });
    h = await startSampleApp(platform, fake, {
      RATE_LIMIT_TPM: String(TPM),
      RATE_LIMIT_RPM: '1000',
      OPENAI_MAX_RETRIES: '1',
      OPENAI_TIMEOUT_MS: '800',
      SAMPLE_USERS: USERS.map((u) => `${u}:${u}-token`).join(','),
    });
    base = await listen(h.app);
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  const chat = (user: string, content: string, maxTokens: number) =>
    request(h.server)
      .post('/chat')
      .set(token(user))
      .send({ messages: messages(content), max_tokens: maxTokens });

  it('reserves prompt + max_tokens, settles to usage.total_tokens; a second request that fits exactly passes, one token more is a 429', async () => {
    const p = prompt('hello there');
    fake.fault({ path: '/v1/chat/completions', delayMs: 150, times: 1 });
    const pending = chat('u1', 'hello there', 100).then((r) => r);
    // while the upstream call is in flight, the whole reservation is held
    await waitFor('the upstream call', () => fake.requestsTo('/v1/chat/completions').length === 1);
    expect(await tokensUsed(h.app, 'u1')).toBe(p + 100);
    const res = await pending;
    expect(res.status).toBe(200);
    expect(res.body.usage).toEqual({
      prompt_tokens: p,
      completion_tokens: echo('hello there'),
      total_tokens: p + echo('hello there'),
    });
    const used = await tokensUsed(h.app, 'u1');
    expect(used).toBe(res.body.usage.total_tokens);

    const left = TPM - used;
    const p2 = prompt('again');
    const tooMuch = await chat('u1', 'again', left - p2 + 1);
    expect(tooMuch.status).toBe(429);
    expect(tooMuch.body).toMatchObject({ statusCode: 429, error: 'token_limit_exceeded', limit: 'minute' });
    expect(tooMuch.body.request_id).toBe(tooMuch.headers['x-request-id']);
    expect(Number(tooMuch.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(Number(tooMuch.headers['retry-after'])).toBeLessThanOrEqual(60);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
    expect(await tokensUsed(h.app, 'u1')).toBe(used);

    const exact = await chat('u1', 'again', left - p2);
    expect(exact.status).toBe(200);
    expect(await tokensUsed(h.app, 'u1')).toBe(used + exact.body.usage.total_tokens);
  });

  it('a request whose reservation exceeds the whole window: 413, no upstream call, nothing counted', async () => {
    const res = await chat('u2', 'hi', TPM - prompt('hi') + 1);
    expect(res.status).toBe(413);
    expect(res.body).toMatchObject({ statusCode: 413, error: 'token_limit_exceeds_window' });
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(0);
    expect(await tokensUsed(h.app, 'u2')).toBe(0);
    // the same prompt with a max_tokens that fits the window goes through
    expect((await chat('u2', 'hi', TPM - prompt('hi'))).status).toBe(200);
  });

  it('an upstream 500 after retries gives the reservation back', async () => {
    await chat('u3', 'first', 20).expect(200);
    const before = await tokensUsed(h.app, 'u3');
    fake.fault({ path: '/v1/chat/completions', status: 500 });
    const res = await chat('u3', 'second', 200);
    expect(res.status).toBe(502);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1 + 2);
    expect(await tokensUsed(h.app, 'u3')).toBe(before);
    // no phantom 429: the whole rest of the window is usable
    fake.clearFaults();
    expect((await chat('u3', 'third', TPM - before - prompt('third'))).status).toBe(200);
  });

  it('an upstream timeout gives the reservation back', async () => {
    fake.fault({ path: '/v1/chat/completions', hang: true });
    const res = await chat('u4', 'slow', 250);
    expect(res.status).toBe(504);
    expect(res.body.error).toBe('upstream_timeout');
    expect(await tokensUsed(h.app, 'u4')).toBe(0);
    fake.clearFaults();
    expect((await chat('u4', 'fast', TPM - prompt('fast'))).status).toBe(200);
  });

  it('a client that disconnects during POST /chat releases the reservation', async () => {
    fake.fault({ path: '/v1/chat/completions', delayMs: 2_000, times: 1 });
    const req = http.request(`${base}/chat`, {
      method: 'POST',
      headers: { ...token('u5'), 'content-type': 'application/json' },
    });
    req.on('error', () => undefined);
    req.end(JSON.stringify({ messages: messages('bye'), max_tokens: 200 }));
    await waitFor('the upstream call', () => fake.requestsTo('/v1/chat/completions').length === 1);
    expect(await tokensUsed(h.app, 'u5')).toBe(prompt('bye') + 200);
    req.destroy();
    await waitFor('the release', async () => (await tokensUsed(h.app, 'u5')) === 0);
  });

  it('a stream aborted mid-way by the client leaves exactly what was received (no leak, no phantom 429)', async () => {
    const p = prompt(LONG);
    const full = echo(LONG);
    expect(full).toBeGreaterThan(50);
    const maxTokens = TPM - p;
    const received = await new Promise<string>((resolve, reject) => {
      const req = http.request(
        `${base}/chat/stream`,
        { method: 'POST', headers: { ...token('u6'), 'content-type': 'application/json' } },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => {
            text += c.toString();
            // a few deltas in, the client goes away
            if ((text.match(/"delta"/g) ?? []).length >= 3) {
              req.destroy();
              resolve(text);
            }
          });
          res.on('error', () => undefined);
        },
      );
      req.on('error', (e) =>
        e.message.includes('socket hang up') || e.message.includes('aborted') ? undefined : reject(e),
      );
      req.end(JSON.stringify({ messages: messages(LONG), max_tokens: maxTokens }));
    });
    expect(received).not.toContain('[DONE]');
    const line = await waitFor('the accounting of the cut stream', () =>
      h.logger.records('openai call').find((l) => l.user === 'u6' && l.status === 'incomplete'),
    );
    const used = await tokensUsed(h.app, 'u6');
    expect(used).toBe(Number(line.prompt_tokens) + Number(line.completion_tokens));
    expect(line.prompt_tokens).toBe(p);
    expect(Number(line.completion_tokens)).toBeGreaterThanOrEqual(1);
    expect(Number(line.completion_tokens)).toBeLessThan(full);
    // what is left of the window is usable at once
    const left = TPM - used;
    const after = await chat('u6', 'x', left - prompt('x'));
    expect(after.status).toBe(200);
    expect(await tokensUsed(h.app, 'u6')).toBe(used + after.body.usage.total_tokens);
  });

  it('token limits hold for OpenAIService.chat() outside HTTP with { user }', async () => {
    const openai = h.app.get(OpenAIService);
    const r = await openai.chat(
      { messages: messages('from a worker'), max_tokens: 50 },
      { user: 'worker-7' },
    );
    expect(r.usage.total_tokens).toBe(prompt('from a worker') + echo('from a worker'));
    expect(await tokensUsed(h.app, 'worker-7')).toBe(r.usage.total_tokens);
    const left = TPM - r.usage.total_tokens;
    const refused = await openai
      .chat({ messages: messages('more'), max_tokens: left - prompt('more') + 1 }, { user: 'worker-7' })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(RateLimitExceededException);
    expect((refused as RateLimitExceededException).getStatus()).toBe(429);
    expect((refused as RateLimitExceededException).body.error).toBe('token_limit_exceeded');
    await expect(
      openai.chat({ messages: messages('huge'), max_tokens: TPM }, { user: 'worker-7' }),
    ).rejects.toBeInstanceOf(TokenReservationTooLargeException);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
    expect(await tokensUsed(h.app, 'worker-7')).toBe(r.usage.total_tokens);
    // and another worker user is on its own
    expect(
      (await openai.chat({ messages: messages('hi'), max_tokens: 10 }, { user: 'worker-8' })).content,
    ).toBe('Echo: hi');
  });
});
