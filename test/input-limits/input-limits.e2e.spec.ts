import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { InputTooLargeException, OpenAIBadRequestException, type ChatStream } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { countChatPromptTokens } from '../../lib/tokens/token-counter.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';
import { ModerationFixtureController, expectNoLeak } from '../moderation/moderation-fixture.js';

const CHAT = '/v1/chat/completions';

type Msg = { role: 'user'; content: string };

/** A one-message chat of exactly `n` prompt tokens (as OpenAI counts them for o200k models). */
function chatOfTokens(n: number): Msg[] {
  for (let words = 1; words < n * 2; words++) {
    for (const tail of ['', '.', '!?']) {
      const messages: Msg[] = [{ role: 'user', content: 'word '.repeat(words).trim() + tail }];
      const count = countChatPromptTokens(messages);
      if (count === n) return messages;
      if (count > n + 2) break;
    }
  }
  throw new Error(`could not build a chat of exactly ${n} prompt tokens`);
}

function expectTooLarge(res: request.Response, limit: string, max: number) {
  expect(res.status).toBe(413);
  expect(res.headers['content-type']).toContain('application/json');
  expect(res.body).toMatchObject({
    statusCode: 413,
    error: 'input_too_large',
    request_id: res.headers['x-request-id'],
    limit,
    max,
  });
  expect(res.body.message).toContain(limit);
  expectNoLeak(res);
}

function expectInvalidBody(res: request.Response) {
  expect(res.status).toBe(400);
  expect(res.body).toMatchObject({
    statusCode: 400,
    error: 'invalid_body',
    message: expect.any(String),
    request_id: res.headers['x-request-id'],
  });
  expectNoLeak(res);
}

describe.each(PLATFORMS)('input caps on the sample app (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake);
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  it('a 2 MB body: 413 payload_too_large from the body limit, no upstream call of any kind', async () => {
    const huge = JSON.stringify(userMessage('x'.repeat(2 * 1024 * 1024)));
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .set('content-type', 'application/json')
      .send(huge);
    expect(res.status).toBe(413);
    expect(res.body).toMatchObject({
      statusCode: 413,
      error: 'payload_too_large',
      request_id: res.headers['x-request-id'],
    });
    expect(res.text.length).toBeLessThan(1000);
    expect(fake.requests).toHaveLength(0);
  });

  it('a body under the body limit but over maxChars (32,000 by default): 413 input_too_large naming maxChars', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .send(userMessage('y'.repeat(500_000)));
    expectTooLarge(res, 'maxChars', 32_000);
    expect(res.text).not.toContain('yyyy');
    expect(fake.requests).toHaveLength(0);
  });

  it('max_tokens above the cap (1024) is clamped: the upstream sees the cap', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .send({ ...userMessage('clamp me'), max_tokens: 50_000 });
    expect(res.status).toBe(200);
    const [chat] = fake.requestsTo(CHAT);
    expect(chat.body.max_tokens).toBe(1024);
    expect(chat.body.max_completion_tokens).toBeUndefined();
  });

  it('max_completion_tokens above the cap is clamped too, and a smaller one is kept', async () => {
    await request(h.server)
      .post('/chat')
      .set(auth())
      .send({ ...userMessage('clamp me too'), max_completion_tokens: 4096 })
      .expect(200);
    await request(h.server)
      .post('/chat')
      .set(auth())
      .send({ ...userMessage('keep mine'), max_tokens: 7 })
      .expect(200);
    const [a, b] = fake.requestsTo(CHAT);
    expect(a.body.max_completion_tokens).toBe(1024);
    expect(b.body.max_tokens).toBe(7);
  });

  it('no max_tokens: the default (the cap) is sent', async () => {
    await request(h.server).post('/chat').set(auth()).send(userMessage('default')).expect(200);
    expect(fake.requestsTo(CHAT)[0].body.max_completion_tokens).toBe(1024);
  });

  it.each([
    ['logprobs', { logprobs: true, top_logprobs: 5 }],
    ['logit_bias', { logit_bias: { '50256': -100 } }],
    ['n', { n: 2 }],
    ['tools', { tools: [{ type: 'function', function: { name: 'f', parameters: {} } }] }],
    ['stream', { stream: true }],
    ['response_format', { response_format: { type: 'json_object' } }],
    ['user', { user: 'someone-else' }],
  ])('%s is refused: 400 invalid_body naming it, no upstream call', async (key, extra) => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .send({ ...userMessage('hi'), ...extra });
    expectInvalidBody(res);
    expect(res.body.message).toContain(key);
    expect(fake.requests).toHaveLength(0);
  });

  it.each([
    [
      'an image part',
      {
        messages: [
          { role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/a.png' } }] },
        ],
      },
    ],
    ['a tool role', { messages: [{ role: 'tool', content: 'x', tool_call_id: 'c1' }] }],
    ['empty messages', { messages: [] }],
    ['max_tokens 0', { ...userMessage('x'), max_tokens: 0 }],
    ['max_tokens as a string', { ...userMessage('x'), max_tokens: '100' }],
    ['temperature 3', { ...userMessage('x'), temperature: 3 }],
    ['an empty content-part array', { messages: [{ role: 'user', content: [] }] }],
  ])('%s: 400, no upstream call', async (_name, body) => {
    const res = await request(h.server).post('/chat').set(auth()).send(body);
    expectInvalidBody(res);
    expect(fake.requests).toHaveLength(0);
  });

  it('the stream route enforces the same caps (413 JSON, no event stream)', async () => {
    const res = await request(h.server)
      .post('/chat/stream')
      .set(auth())
      .send(userMessage('z'.repeat(40_000)));
    expectTooLarge(res, 'maxChars', 32_000);
    expect(fake.requests).toHaveLength(0);
  });
});

const N = 60;

describe.each(PLATFORMS)('configured input caps (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  let rejecting: FixtureHandle;
  let chars: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    const input = { maxMessages: 3, maxChars: 1_000, maxPromptTokens: N };
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, { input, moderation: { enabled: false } }),
      {
        controllers: [ModerationFixtureController],
      },
    );
    rejecting = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        input,
        moderation: { enabled: false },
        maxTokens: { cap: 100, overCap: 'reject' },
      }),
      { controllers: [ModerationFixtureController] },
    );
    chars = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        input: { maxChars: 1_000 },
        moderation: { enabled: false },
      }),
      {
        controllers: [ModerationFixtureController],
      },
    );
  });
  afterAll(async () => {
    await h.close();
    await rejecting.close();
    await chars.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  it(`maxPromptTokens ${N}: a prompt of exactly ${N} tokens passes, and the upstream counts ${N}`, async () => {
    const messages = chatOfTokens(N);
    const res = await request(h.server).post('/chat').send({ messages });
    expect(res.status).toBe(200);
    expect(res.body.usage.prompt_tokens).toBe(N);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it(`maxPromptTokens ${N}: ${N + 1} tokens -> 413 input_too_large naming maxPromptTokens, no upstream call`, async () => {
    const messages = chatOfTokens(N + 1);
    const res = await request(h.server).post('/chat').send({ messages });
    expectTooLarge(res, 'maxPromptTokens', N);
    expect(res.body.message).toContain(String(N + 1));
    expect(fake.requests).toHaveLength(0);
  });

  it('maxMessages 3: 3 messages pass, 4 -> 413 naming maxMessages', async () => {
    const msgs = (k: number) =>
      Array.from({ length: k }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `m${i}` }));
    await request(h.server)
      .post('/chat')
      .send({ messages: msgs(3) })
      .expect(200);
    fake.reset();
    const res = await request(h.server)
      .post('/chat')
      .send({ messages: msgs(4) });
    expectTooLarge(res, 'maxMessages', 3);
    expect(fake.requests).toHaveLength(0);
  });

  it('maxChars 1000 counts every message and text part: 1000 pass, 1001 -> 413 naming maxChars', async () => {
    // 400 + 300 + (150 + 1 + 149) = 1000 characters (parts joined with a newline).
    const body = (extra: string) => ({
      messages: [
        { role: 'system', content: 'a'.repeat(400) },
        { role: 'user', content: 'b'.repeat(300) + extra },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'c'.repeat(150) },
            { type: 'text', text: 'd'.repeat(149) },
          ],
        },
      ],
    });
    await request(chars.server).post('/chat').send(body('')).expect(200);
    fake.reset();
    const res = await request(chars.server).post('/chat').send(body('e'));
    expectTooLarge(res, 'maxChars', 1_000);
    expect(fake.requests).toHaveLength(0);
  });

  it("overCap: 'reject': max_tokens above the cap -> 400, no upstream call; at the cap -> 200", async () => {
    const res = await request(rejecting.server)
      .post('/chat')
      .send({ ...userMessage('x'), max_tokens: 101 });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({
      statusCode: 400,
      error: 'max_tokens_above_cap',
      request_id: res.headers['x-request-id'],
    });
    expect(fake.requests).toHaveLength(0);
    await request(rejecting.server)
      .post('/chat')
      .send({ ...userMessage('x'), max_tokens: 100 })
      .expect(200);
    expect(fake.requestsTo(CHAT)[0].body.max_tokens).toBe(100);
  });

  it('OpenAIService.chat() outside HTTP enforces the same caps, before any upstream call', async () => {
    const tooMany = Array.from({ length: 4 }, () => ({ role: 'user' as const, content: 'm' }));
    await expect(h.openai.chat({ messages: tooMany })).rejects.toBeInstanceOf(InputTooLargeException);
    await expect(
      h.openai.chat({ messages: [{ role: 'user', content: 'q'.repeat(1_001) }] }),
    ).rejects.toMatchObject({
      status: 413,
      response: expect.objectContaining({ limit: 'maxChars' }),
    });
    await expect(h.openai.chat({ messages: chatOfTokens(N + 1) })).rejects.toMatchObject({
      response: expect.objectContaining({ limit: 'maxPromptTokens' }),
    });
    await expect(
      rejecting.openai.chat({ messages: [{ role: 'user', content: 'x' }], max_tokens: 500 }),
    ).rejects.toBeInstanceOf(OpenAIBadRequestException);
    expect(fake.requests).toHaveLength(0);
    const ok = await h.openai.chat({ messages: chatOfTokens(N) });
    expect(ok.usage.prompt_tokens).toBe(N);
  });

  it('OpenAIService.stream() outside HTTP enforces the caps too', async () => {
    let stream: ChatStream | undefined;
    await expect(
      (async () => {
        stream = await h.openai.stream({ messages: chatOfTokens(N + 1) });
      })(),
    ).rejects.toMatchObject({ status: 413 });
    expect(stream).toBeUndefined();
    expect(fake.requests).toHaveLength(0);
  });
});
