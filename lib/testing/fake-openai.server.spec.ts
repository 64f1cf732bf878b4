import OpenAI, {
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  RateLimitError,
} from 'openai';
import type { ChatCompletionChunk, ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { decode, encode } from 'gpt-tokenizer/encoding/o200k_base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  countChatPromptTokens,
  countTextTokens,
  DEFAULT_FAKE_MODELS,
  FakeOpenAIServer,
  MODERATION_CATEGORIES,
  type RecordedRequest,
} from './index.js';

const REQUEST_ID = /^req_[0-9a-f]{32}$/;
const MODEL = 'gpt-4o-mini-2024-07-18';
const HELLO: ChatCompletionMessageParam[] = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Hello there, fake server' },
];

function lastRequest(server: FakeOpenAIServer): RecordedRequest {
  const r = server.requests.at(-1);
  if (!r) throw new Error('no request recorded');
  return r;
}

async function catchError(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

describe('countChatPromptTokens', () => {
  it('is deterministic, grows with content and joins text parts', () => {
    const a = countChatPromptTokens([{ role: 'user', content: 'Hello' }]);
    expect(a).toBe(countChatPromptTokens([{ role: 'user', content: 'Hello' }]));
    expect(a).toBeGreaterThan(encode('Hello').length); // chat framing tokens are included
    expect(
      countChatPromptTokens([{ role: 'user', content: 'Hello world, how are you today?' }]),
    ).toBeGreaterThan(a);
    expect(
      countChatPromptTokens([
        {
          role: 'user',
          content: [
            { type: 'text', text: 'one' },
            { type: 'image_url', image_url: { url: 'https://example.com/x.png' } },
            { type: 'text', text: 'two' },
          ],
        },
      ]),
    ).toBe(countChatPromptTokens([{ role: 'user', content: 'one\ntwo' }]));
    // OpenAI's own message param type is accepted (compile-time check) and special-token text does not throw.
    const typed: ChatCompletionMessageParam[] = [{ role: 'user', content: 'say <|endoftext|> please' }];
    expect(countChatPromptTokens(typed)).toBeGreaterThan(0);
  });
});

describe('FakeOpenAIServer', () => {
  let server: FakeOpenAIServer;
  let client: OpenAI;

  beforeAll(async () => {
    server = await FakeOpenAIServer.start();
    client = new OpenAI({ apiKey: 'sk-test', baseURL: server.baseURL, maxRetries: 0 });
  });
  afterEach(() => {
    server.reset();
    server.setApiKeys(undefined);
  });
  afterAll(async () => {
    await server.close();
  });

  it('listens on 127.0.0.1 with an ephemeral port', () => {
    expect(server.baseURL).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
    expect(server.port).toBeGreaterThan(0);
  });

  describe('chat completions', () => {
    it('answers a chat.completion with deterministic usage and the recorded request id', async () => {
      const completion = await client.chat.completions.create({ model: MODEL, messages: HELLO });

      expect(completion.id).toMatch(/^chatcmpl-/);
      expect(completion.object).toBe('chat.completion');
      expect(completion.model).toBe(MODEL);
      expect(typeof completion.created).toBe('number');
      expect(completion.system_fingerprint).toBeTruthy();
      expect(completion.choices).toHaveLength(1);
      const [choice] = completion.choices;
      expect(choice!.index).toBe(0);
      expect(choice!.finish_reason).toBe('stop');
      expect(choice!.message).toMatchObject({
        role: 'assistant',
        content: 'Echo: Hello there, fake server',
        refusal: null,
      });

      const promptTokens = countChatPromptTokens(HELLO);
      const completionTokens = countTextTokens('Echo: Hello there, fake server');
      expect(completion.usage).toMatchObject({
        prompt_tokens: promptTokens,
        completion_tokens: completionTokens,
        total_tokens: promptTokens + completionTokens,
        prompt_tokens_details: { cached_tokens: 0 },
        completion_tokens_details: { reasoning_tokens: 0 },
      });

      const recorded = lastRequest(server);
      expect(completion._request_id).toBe(recorded.requestId);
      expect(recorded.requestId).toMatch(REQUEST_ID);
      expect(recorded).toMatchObject({
        method: 'POST',
        path: '/v1/chat/completions',
        model: MODEL,
        stream: false,
      });
      expect(recorded.body.messages).toEqual(HELLO);
      expect(recorded.headers.authorization).toBe('Bearer sk-test');
      expect(recorded.at).toBeGreaterThan(0);
    });

    it('exposes x-request-id through .withResponse(), unique per request', async () => {
      const first = await client.chat.completions.create({ model: MODEL, messages: HELLO }).withResponse();
      const second = await client.chat.completions.create({ model: MODEL, messages: HELLO }).withResponse();

      const id = first.response.headers.get('x-request-id');
      expect(id).toMatch(REQUEST_ID);
      expect(first.request_id).toBe(id);
      expect((first.data as { _request_id?: string | null })._request_id).toBe(id);
      expect(first.response.headers.get('openai-processing-ms')).toMatch(/^\d+$/);
      expect(second.request_id).not.toBe(id);
      expect(server.requests.map((r) => r.requestId)).toEqual([id, second.request_id]);
    });

    it('streams SSE chunks ending with a usage chunk when include_usage is set', async () => {
      const stream = await client.chat.completions.create({
        model: MODEL,
        messages: HELLO,
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks: ChatCompletionChunk[] = [];
      for await (const chunk of stream) chunks.push(chunk);

      expect(chunks.length).toBeGreaterThanOrEqual(4);
      expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.model === MODEL)).toBe(true);
      expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
      expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
      const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
      expect(text).toBe('Echo: Hello there, fake server');
      // one chunk per word-ish piece
      expect(chunks.filter((c) => c.choices[0]?.delta.content).length).toBe(5);
      const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
      expect(finish.map((c) => c.choices[0]!.finish_reason)).toEqual(['stop']);

      const last = chunks.at(-1)!;
      expect(last.choices).toEqual([]);
      const promptTokens = countChatPromptTokens(HELLO);
      expect(last.usage).toMatchObject({
        prompt_tokens: promptTokens,
        completion_tokens: countTextTokens(text),
        total_tokens: promptTokens + countTextTokens(text),
      });
      expect(chunks.slice(0, -1).every((c) => c.usage == null)).toBe(true);
      expect(lastRequest(server).stream).toBe(true);
    });

    it('streams without a usage chunk unless asked, and the raw stream ends with [DONE]', async () => {
      const response = await client.chat.completions
        .create({ model: MODEL, messages: HELLO, stream: true })
        .asResponse();
      expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
      expect(response.headers.get('x-request-id')).toBe(lastRequest(server).requestId);
      const raw = await response.text();
      const events = raw.split('\n\n').filter(Boolean);
      expect(events.at(-1)).toBe('data: [DONE]');
      const chunks = events
        .slice(0, -1)
        .map((e) => JSON.parse(e.slice('data: '.length)) as ChatCompletionChunk);
      expect(chunks.every((c) => c.choices.length === 1 && c.usage === undefined)).toBe(true);
    });

    it('truncates to max_tokens / max_completion_tokens with finish_reason length', async () => {
      const long = 'one two three four five six seven eight nine ten';
      const messages: ChatCompletionMessageParam[] = [{ role: 'user', content: long }];
      const fullTokens = encode(`Echo: ${long}`);

      const a = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 3 });
      expect(a.choices[0]!.finish_reason).toBe('length');
      expect(a.usage!.completion_tokens).toBe(3);
      expect(a.choices[0]!.message.content).toBe(decode(fullTokens.slice(0, 3)));

      const b = await client.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 5 });
      expect(b.choices[0]!.finish_reason).toBe('length');
      expect(b.usage!.completion_tokens).toBe(5);
      expect(b.usage!.total_tokens).toBe(b.usage!.prompt_tokens + 5);

      const c = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 1000 });
      expect(c.choices[0]!.finish_reason).toBe('stop');
      expect(c.usage!.completion_tokens).toBe(fullTokens.length);

      const stream = await client.chat.completions.create({
        model: MODEL,
        messages,
        max_tokens: 3,
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks: ChatCompletionChunk[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      expect(chunks.map((ch) => ch.choices[0]?.delta.content ?? '').join('')).toBe(
        decode(fullTokens.slice(0, 3)),
      );
      expect(chunks.find((ch) => ch.choices[0]?.finish_reason)!.choices[0]!.finish_reason).toBe('length');
      expect(chunks.at(-1)!.usage!.completion_tokens).toBe(3);
    });

    it('rejects a request without messages with a 400', async () => {
      const err = await catchError(
        client.chat.completions.create({
          model: MODEL,
        } as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming),
      );
      expect(err).toBeInstanceOf(BadRequestError);
      const e = err as BadRequestError;
      expect(e.status).toBe(400);
      expect(e.param).toBe('messages');
      expect(e.type).toBe('invalid_request_error');
      expect(e.requestID).toBe(lastRequest(server).requestId);
    });
  });

  describe('moderations', () => {
    it('flags a trigger in an array input and leaves the clean item alone', async () => {
      const res = await client.moderations.create({ input: ['please flag_me now', 'a lovely day'] });

      expect(res.id).toMatch(/^modr-/);
      expect(res.model).toBe('omni-moderation-latest');
      expect(res.results).toHaveLength(2);
      const [bad, good] = res.results;
      expect(bad!.flagged).toBe(true);
      expect(bad!.categories.harassment).toBe(true);
      expect(bad!.category_scores.harassment).toBe(0.95);
      expect(bad!.categories.hate).toBe(false);
      expect(bad!.category_scores.hate).toBe(0.0001);
      expect(good!.flagged).toBe(false);
      expect(Object.values(good!.categories).every((v) => v === false)).toBe(true);
      for (const r of res.results) {
        expect(Object.keys(r.categories).sort()).toEqual([...MODERATION_CATEGORIES].sort());
        expect(Object.keys(r.category_scores).sort()).toEqual([...MODERATION_CATEGORIES].sort());
        expect(r.category_applied_input_types.violence).toEqual(['text']);
      }
      expect(res._request_id).toBe(lastRequest(server).requestId);
    });

    it('accepts the multimodal array form as one input and honours the requested model', async () => {
      const res = await client.moderations.create({
        model: 'omni-moderation-2024-09-26',
        input: [
          { type: 'text', text: 'I say KILL_ME_NOW' },
          { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } },
        ],
      });
      expect(res.model).toBe('omni-moderation-2024-09-26');
      expect(res.results).toHaveLength(1);
      const [r] = res.results;
      expect(r!.flagged).toBe(true);
      expect(r!.categories['self-harm']).toBe(true);
      expect(r!.categories['self-harm/intent']).toBe(true);
      expect(r!.categories.harassment).toBe(false);
      expect(r!.category_applied_input_types['self-harm']).toEqual(['text', 'image']);
    });
  });

  describe('embeddings', () => {
    it('serves the SDK default base64 encoding, decoded to deterministic vectors', async () => {
      const res = await client.embeddings.create({
        model: 'text-embedding-3-small',
        input: ['alpha', 'beta'],
      });

      expect(lastRequest(server).body.encoding_format).toBe('base64');
      expect(res.object).toBe('list');
      expect(res.model).toBe('text-embedding-3-small');
      expect(res.data.map((d) => d.index)).toEqual([0, 1]);
      for (const d of res.data) {
        expect(d.object).toBe('embedding');
        expect(Array.isArray(d.embedding)).toBe(true);
        expect(d.embedding).toHaveLength(8);
        const norm = Math.sqrt(d.embedding.reduce((s, v) => s + v * v, 0));
        expect(norm).toBeCloseTo(1, 5);
      }
      expect(res.data[0]!.embedding).not.toEqual(res.data[1]!.embedding);
      expect(res.usage).toEqual({
        prompt_tokens: countTextTokens('alpha') + countTextTokens('beta'),
        total_tokens: countTextTokens('alpha') + countTextTokens('beta'),
      });

      // The explicit float encoding returns the very same numbers.
      const floats = await client.embeddings.create({
        model: 'text-embedding-3-small',
        input: 'alpha',
        encoding_format: 'float',
      });
      expect(floats.data[0]!.embedding).toEqual(res.data[0]!.embedding);
    });

    it('honours body.dimensions', async () => {
      const res = await client.embeddings.create({
        model: 'text-embedding-3-small',
        input: 'x',
        dimensions: 20,
      });
      expect(res.data[0]!.embedding).toHaveLength(20);
    });
  });

  describe('models', () => {
    it('lists and retrieves models, 404 for an unknown one', async () => {
      const ids: string[] = [];
      for await (const m of client.models.list()) ids.push(m.id);
      expect(ids).toEqual([...DEFAULT_FAKE_MODELS]);
      expect(ids).toEqual(
        expect.arrayContaining([
          'gpt-4o-2024-08-06',
          'gpt-4o-mini-2024-07-18',
          'omni-moderation-latest',
          'text-embedding-3-small',
        ]),
      );

      const model = await client.models.retrieve('gpt-4o-2024-08-06');
      expect(model).toMatchObject({ id: 'gpt-4o-2024-08-06', object: 'model' });

      const err = await catchError(client.models.retrieve('gpt-nope'));
      expect(err).toBeInstanceOf(NotFoundError);
      expect((err as NotFoundError).code).toBe('model_not_found');
    });
  });

  describe('raw HTTP errors', () => {
    it('404s an unknown path with an OpenAI error body and a request id', async () => {
      const res = await fetch(`${server.baseURL}/nope`, { method: 'POST', body: '{}' });
      expect(res.status).toBe(404);
      expect(res.headers.get('x-request-id')).toMatch(REQUEST_ID);
      expect(await res.json()).toEqual({
        error: {
          message: 'Invalid URL (POST /v1/nope)',
          type: 'invalid_request_error',
          param: null,
          code: null,
        },
      });
      expect(lastRequest(server).path).toBe('/v1/nope');
    });

    it('400s an invalid JSON body and records the raw text', async () => {
      const res = await fetch(`${server.baseURL}/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"model": ',
      });
      expect(res.status).toBe(400);
      expect(res.headers.get('x-request-id')).toBe(lastRequest(server).requestId);
      const body = (await res.json()) as { error: { type: string; message: string } };
      expect(body.error.type).toBe('invalid_request_error');
      expect(body.error.message).toMatch(/could not parse the JSON body/);
      expect(lastRequest(server).body).toBe('{"model": ');
    });
  });

  describe('API keys', () => {
    it('answers 401 invalid_api_key for an unknown key once keys are set', async () => {
      server.setApiKeys(['sk-good']);

      const err = await catchError(client.chat.completions.create({ model: MODEL, messages: HELLO }));
      expect(err).toBeInstanceOf(AuthenticationError);
      expect((err as AuthenticationError).status).toBe(401);
      expect((err as AuthenticationError).code).toBe('invalid_api_key');
      expect((err as AuthenticationError).requestID).toMatch(REQUEST_ID);

      const good = new OpenAI({ apiKey: 'sk-good', baseURL: server.baseURL, maxRetries: 0 });
      const ok = await good.chat.completions.create({ model: MODEL, messages: HELLO });
      expect(ok.choices[0]!.message.content).toBe('Echo: Hello there, fake server');

      server.setApiKeys(undefined);
      await expect(client.models.retrieve('gpt-4o')).resolves.toMatchObject({ id: 'gpt-4o' });
    });

    it('takes keys from the start options too', async () => {
      const locked = await FakeOpenAIServer.start({ apiKeys: ['k1'] });
      try {
        const c = new OpenAI({ apiKey: 'k2', baseURL: locked.baseURL, maxRetries: 0 });
        await expect(c.models.list()).rejects.toBeInstanceOf(AuthenticationError);
        const c1 = new OpenAI({ apiKey: 'k1', baseURL: locked.baseURL, maxRetries: 0 });
        await expect(c1.models.retrieve('gpt-4o')).resolves.toMatchObject({ id: 'gpt-4o' });
      } finally {
        await locked.close();
      }
    });
  });

  describe('faults', () => {
    it('status + retry-after-ms / retry-after headers are visible on the APIError', async () => {
      server.fault({ path: '/v1/chat/completions', status: 429, retryAfterMs: 1234, retryAfter: 2 });

      const err = await catchError(client.chat.completions.create({ model: MODEL, messages: HELLO }));
      expect(err).toBeInstanceOf(RateLimitError);
      const e = err as RateLimitError;
      expect(e.status).toBe(429);
      expect(e.code).toBe('rate_limit_exceeded');
      expect(e.headers.get('retry-after-ms')).toBe('1234');
      expect(e.headers.get('retry-after')).toBe('2');
      expect(e.requestID).toBe(lastRequest(server).requestId);
      expect(e.error).toMatchObject({ type: 'requests', code: 'rate_limit_exceeded', param: null });
      expect(lastRequest(server).fault).toMatchObject({ status: 429 });

      // Other paths are not affected.
      await expect(client.models.retrieve('gpt-4o')).resolves.toMatchObject({ id: 'gpt-4o' });
    });

    it('500 maps to server_error and error fields can be overridden', async () => {
      server.fault({ status: 500, times: 1 });
      server.fault({
        status: 429,
        errorCode: 'insufficient_quota',
        errorType: 'insufficient_quota',
        times: 1,
      });

      const first = await catchError(client.chat.completions.create({ model: MODEL, messages: HELLO }));
      expect(first).toBeInstanceOf(InternalServerError);
      expect((first as APIError).type).toBe('server_error');
      expect((first as APIError).code).toBe('server_error');

      const second = await catchError(client.chat.completions.create({ model: MODEL, messages: HELLO }));
      expect(second).toBeInstanceOf(RateLimitError);
      expect((second as APIError).code).toBe('insufficient_quota');

      await expect(client.chat.completions.create({ model: MODEL, messages: HELLO })).resolves.toBeTruthy();
    });

    it('the SDK retries honour retry-after-ms and succeed once the fault is used up', async () => {
      const retrying = new OpenAI({ apiKey: 'sk-test', baseURL: server.baseURL, maxRetries: 2 });
      server.fault({ path: '/v1/chat/completions', status: 503, retryAfterMs: 150, times: 2 });

      const started = performance.now();
      const res = await retrying.chat.completions.create({ model: MODEL, messages: HELLO });
      expect(res.choices[0]!.message.content).toBe('Echo: Hello there, fake server');

      const attempts = server.requestsTo('/v1/chat/completions');
      expect(attempts).toHaveLength(3);
      expect(attempts.map((a) => a.fault?.status)).toEqual([503, 503, undefined]);
      expect(attempts[1]!.at - attempts[0]!.at).toBeGreaterThanOrEqual(140);
      expect(performance.now() - started).toBeGreaterThanOrEqual(290);
      expect(res._request_id).toBe(attempts[2]!.requestId);
    });

    it('times and model matching', async () => {
      server.fault({ path: '/v1/chat/completions', model: 'gpt-4o-mini', status: 503, times: 2 });

      await expect(
        client.chat.completions.create({ model: 'gpt-4o', messages: HELLO }),
      ).resolves.toBeTruthy();
      for (let i = 0; i < 2; i++) {
        const err = await catchError(
          client.chat.completions.create({ model: 'gpt-4o-mini', messages: HELLO }),
        );
        expect((err as APIError).status).toBe(503);
      }
      await expect(
        client.chat.completions.create({ model: 'gpt-4o-mini', messages: HELLO }),
      ).resolves.toBeTruthy();

      expect(server.requestsTo('/v1/chat/completions')).toHaveLength(4);
      expect(
        server.requestsTo('/v1/chat/completions', 'gpt-4o-mini').map((r) => r.fault !== undefined),
      ).toEqual([true, true, false]);
      expect(server.requestsTo('/v1/chat/completions', 'gpt-4o')).toHaveLength(1);
    });

    it('clearFaults() removes programmed faults', async () => {
      server.fault({ status: 500 });
      server.clearFaults();
      await expect(client.chat.completions.create({ model: MODEL, messages: HELLO })).resolves.toBeTruthy();
    });

    it('delayMs delays the response', async () => {
      server.fault({ path: '/v1/models', delayMs: 200 });
      const started = performance.now();
      const page = await client.models.list();
      expect(performance.now() - started).toBeGreaterThanOrEqual(190);
      expect(page.data.length).toBeGreaterThan(0);
    });

    it('drop destroys the socket: APIConnectionError', async () => {
      server.fault({ path: '/v1/chat/completions', drop: true, times: 1 });
      const err = await catchError(client.chat.completions.create({ model: MODEL, messages: HELLO }));
      expect(err).toBeInstanceOf(APIConnectionError);
      expect(err).not.toBeInstanceOf(APIConnectionTimeoutError);
      expect(server.requests).toHaveLength(1);
      // The next request works again.
      await expect(client.chat.completions.create({ model: MODEL, messages: HELLO })).resolves.toBeTruthy();
    });

    it('hang + SDK timeout: APIConnectionTimeoutError', async () => {
      server.fault({ path: '/v1/chat/completions', hang: true, times: 1 });
      const impatient = new OpenAI({
        apiKey: 'sk-test',
        baseURL: server.baseURL,
        maxRetries: 0,
        timeout: 300,
      });
      const started = performance.now();
      const err = await catchError(impatient.chat.completions.create({ model: MODEL, messages: HELLO }));
      expect(err).toBeInstanceOf(APIConnectionTimeoutError);
      expect(performance.now() - started).toBeGreaterThanOrEqual(280);
      expect(lastRequest(server).fault).toMatchObject({ hang: true });
    });

    it('malformed: 200 JSON content type with an unparseable body', async () => {
      server.fault({ path: '/v1/chat/completions', malformed: true, times: 1 });
      const err = await catchError(client.chat.completions.create({ model: MODEL, messages: HELLO }));
      expect(err).toBeInstanceOf(SyntaxError);

      server.fault({ path: '/v1/chat/completions', malformed: true, times: 1 });
      const raw = await client.chat.completions.create({ model: MODEL, messages: HELLO }).asResponse();
      expect(raw.status).toBe(200);
      expect(raw.headers.get('content-type')).toBe('application/json');
      const text = await raw.text();
      expect(() => JSON.parse(text)).toThrow(SyntaxError);
    });

    it('streamCutAfterChunks: iteration throws after the given content chunks', async () => {
      server.fault({ path: '/v1/chat/completions', streamCutAfterChunks: 2 });
      // A non-streaming request is not matched by a streaming-only rule.
      await expect(client.chat.completions.create({ model: MODEL, messages: HELLO })).resolves.toBeTruthy();

      const stream = await client.chat.completions.create({
        model: MODEL,
        messages: HELLO,
        stream: true,
        stream_options: { include_usage: true },
      });
      const received: ChatCompletionChunk[] = [];
      const err = await catchError(
        (async () => {
          for await (const chunk of stream) received.push(chunk);
        })(),
      );
      expect(err).toBeInstanceOf(Error);
      expect(received).toHaveLength(3); // role chunk + 2 content chunks
      expect(received.map((c) => c.choices[0]?.delta.content).join('')).toBe('Echo: Hello ');
      expect(received.some((c) => c.usage)).toBe(false);
      expect(server.requests.map((r) => r.fault !== undefined)).toEqual([false, true]);
    });

    it('streamStallAfterChunks: chunks arrive, then nothing until the client aborts', async () => {
      server.fault({ path: '/v1/chat/completions', streamStallAfterChunks: 1 });
      const controller = new AbortController();
      const res = await fetch(`${server.baseURL}/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, messages: HELLO, stream: true }),
        signal: controller.signal,
      });
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      const decoder = new TextDecoder();
      let text = '';
      while ((text.match(/^data: /gm) ?? []).length < 2) {
        const { value, done } = await reader.read();
        if (done) throw new Error('stream ended early');
        text += decoder.decode(value, { stream: true });
      }
      const next = reader.read();
      const outcome = await Promise.race([
        next.then(() => 'data'),
        new Promise((resolve) => setTimeout(() => resolve('stalled'), 250)),
      ]);
      expect(outcome).toBe('stalled');
      expect(text).toContain('"content":"Echo: "');
      controller.abort();
      await expect(next).rejects.toBeInstanceOf(Error);
    });

    it('omitDone: the raw stream has the usage chunk but no [DONE]', async () => {
      server.fault({ path: '/v1/chat/completions', omitDone: true, times: 1 });
      const response = await client.chat.completions
        .create({ model: MODEL, messages: HELLO, stream: true, stream_options: { include_usage: true } })
        .asResponse();
      const raw = await response.text();
      expect(raw).not.toContain('[DONE]');
      expect(raw).toContain('"usage":{"prompt_tokens"');
      expect(raw).toContain('"finish_reason":"stop"');
    });
  });

  it('reset() clears requests (in place) and faults', async () => {
    const requests = server.requests;
    server.fault({ status: 500 });
    await catchError(client.models.list());
    expect(requests).toHaveLength(1);
    server.reset();
    expect(requests).toHaveLength(0);
    expect(server.requests).toBe(requests);
    await expect(client.models.retrieve('gpt-4o')).resolves.toMatchObject({ id: 'gpt-4o' });
  });
});

describe('FakeOpenAIServer options', () => {
  it('reply, cachedTokens, reasoningTokens, embeddingDimensions and moderationTriggers are honoured', async () => {
    const server = await FakeOpenAIServer.start({
      reply: (req) => `model=${req.model} n=${req.messages.length} max=${req.max_tokens ?? 'none'}`,
      cachedTokens: (req) => req.promptTokens - 1,
      reasoningTokens: 7,
      embeddingDimensions: 3,
      moderationTriggers: { banana: ['violence'] },
    });
    try {
      const client = new OpenAI({ apiKey: 'x', baseURL: server.baseURL, maxRetries: 0 });
      const res = await client.chat.completions.create({ model: 'gpt-4o', messages: HELLO });
      const content = 'model=gpt-4o n=2 max=none';
      expect(res.choices[0]!.message.content).toBe(content);
      const promptTokens = countChatPromptTokens(HELLO);
      expect(res.usage).toMatchObject({
        prompt_tokens: promptTokens,
        completion_tokens: countTextTokens(content) + 7,
        prompt_tokens_details: { cached_tokens: promptTokens - 1 },
        completion_tokens_details: { reasoning_tokens: 7 },
      });

      const emb = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'hi' });
      expect(emb.data[0]!.embedding).toHaveLength(3);

      const mod = await client.moderations.create({ input: 'I like BANANAs and FLAG_ME' });
      expect(mod.results[0]!.categories.violence).toBe(true);
      expect(mod.results[0]!.categories.harassment).toBe(false); // defaults are replaced, not merged
    } finally {
      await server.close();
    }
  });

  it('cachedTokens is clamped to prompt_tokens', async () => {
    const server = await FakeOpenAIServer.start({ cachedTokens: 1_000_000 });
    try {
      const client = new OpenAI({ apiKey: 'x', baseURL: server.baseURL, maxRetries: 0 });
      const res = await client.chat.completions.create({ model: 'gpt-4o', messages: HELLO });
      expect(res.usage!.prompt_tokens_details!.cached_tokens).toBe(res.usage!.prompt_tokens);
    } finally {
      await server.close();
    }
  });

  it('streamChunkDelayMs spaces out SSE chunks', async () => {
    const server = await FakeOpenAIServer.start({ streamChunkDelayMs: 40 });
    try {
      const client = new OpenAI({ apiKey: 'x', baseURL: server.baseURL, maxRetries: 0 });
      const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: HELLO, stream: true });
      const times: number[] = [];
      for await (const _chunk of stream) times.push(performance.now());
      expect(times.length).toBeGreaterThanOrEqual(6);
      // n chunks are separated by n-1 server-side delays (small tolerance for delivery jitter).
      expect(times.at(-1)! - times[0]!).toBeGreaterThanOrEqual((times.length - 1) * 40 - 30);
    } finally {
      await server.close();
    }
  });

  it('close() never hangs on hung requests or stalled streams, and is idempotent', async () => {
    const server = await FakeOpenAIServer.start();
    server.fault({ path: '/v1/embeddings', hang: true });
    server.fault({ path: '/v1/chat/completions', streamStallAfterChunks: 0 });
    const client = new OpenAI({ apiKey: 'x', baseURL: server.baseURL, maxRetries: 0, timeout: 60_000 });

    const hung = catchError(client.embeddings.create({ model: 'text-embedding-3-small', input: 'x' }));
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: HELLO, stream: true });
    const stalled = catchError(
      (async () => {
        for await (const _chunk of stream) {
          // consume
        }
      })(),
    );
    while (server.requests.length < 2) await new Promise((r) => setTimeout(r, 10));

    const started = performance.now();
    await server.close();
    expect(performance.now() - started).toBeLessThan(1000);
    expect(await hung).toBeInstanceOf(APIConnectionError);
    expect(await stalled).toBeInstanceOf(Error);
    await server.close(); // second call is a no-op
  });
});
