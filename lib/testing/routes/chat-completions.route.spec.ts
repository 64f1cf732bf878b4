import OpenAI, { APIError, NotFoundError, RateLimitError } from 'openai';
import type {
  ChatCompletionChunk,
  ChatCompletionMessageParam,
  ChatCompletionTool,
} from 'openai/resources/chat/completions';
import { encode } from 'gpt-tokenizer/encoding/o200k_base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { countTextTokens, FakeOpenAIServer, TOOL_CALL_TRIGGER } from '../index.js';
import { formatResetDuration } from '../fake-openai.rate-limits.js';

const MODEL = 'gpt-4o-mini-2024-07-18';
const HELLO: ChatCompletionMessageParam[] = [{ role: 'user', content: 'Hello there, fake server' }];
const WEATHER: ChatCompletionTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    parameters: {
      type: 'object',
      properties: {
        city: { type: 'string' },
        unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
        days: { type: 'integer', minimum: 1 },
        note: { type: 'string' },
      },
      required: ['city', 'unit', 'days'],
    },
  },
};
const TIME: ChatCompletionTool = {
  type: 'function',
  function: { name: 'get_time', parameters: { type: 'object', properties: {} } },
};

async function chunksOf(stream: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletionChunk[]> {
  const out: ChatCompletionChunk[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

describe('FakeOpenAIServer: chat completions extras', () => {
  let server: FakeOpenAIServer;
  let client: OpenAI;

  beforeAll(async () => {
    server = await FakeOpenAIServer.start();
    client = new OpenAI({ apiKey: 'sk-test', baseURL: server.baseURL, maxRetries: 0 });
  });
  afterEach(() => {
    server.reset();
  });
  afterAll(async () => {
    await server.close();
  });

  describe('tool calls', () => {
    it(`a user message with ${TOOL_CALL_TRIGGER} gets a call of the first tool with minimal arguments`, async () => {
      const res = await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'weather please CALL_TOOL' }],
        tools: [WEATHER, TIME],
      });
      const choice = res.choices[0]!;
      expect(choice.finish_reason).toBe('tool_calls');
      expect(choice.message.content).toBeNull();
      const call = choice.message.tool_calls![0]!;
      expect(call.id).toMatch(/^call_/);
      if (call.type !== 'function') throw new Error('expected a function call');
      expect(call.function.name).toBe('get_weather');
      expect(JSON.parse(call.function.arguments)).toEqual({ city: '', unit: 'celsius', days: 1 });
      expect(res.usage!.completion_tokens).toBe(countTextTokens(`get_weather${call.function.arguments}`));
    });

    it('CALL_TOOL:<name>, tool_choice required or named pick the tool; none, no trigger or a tool result do not', async () => {
      const named = await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'CALL_TOOL:get_time' }],
        tools: [WEATHER, TIME],
      });
      expect(named.choices[0]!.message.tool_calls![0]).toMatchObject({
        function: { name: 'get_time', arguments: '{}' },
      });

      const required = await client.chat.completions.create({
        model: MODEL,
        messages: HELLO,
        tools: [WEATHER],
        tool_choice: 'required',
      });
      expect(required.choices[0]!.finish_reason).toBe('tool_calls');

      const chosen = await client.chat.completions.create({
        model: MODEL,
        messages: HELLO,
        tools: [WEATHER, TIME],
        tool_choice: { type: 'function', function: { name: 'get_time' } },
      });
      expect(chosen.choices[0]!.message.tool_calls![0]).toMatchObject({ function: { name: 'get_time' } });

      const none = await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'CALL_TOOL' }],
        tools: [WEATHER],
        tool_choice: 'none',
      });
      expect(none.choices[0]!.message.content).toBe('Echo: CALL_TOOL');

      const plain = await client.chat.completions.create({ model: MODEL, messages: HELLO, tools: [WEATHER] });
      expect(plain.choices[0]!.finish_reason).toBe('stop');

      const answered = await client.chat.completions.create({
        model: MODEL,
        tools: [WEATHER],
        messages: [
          { role: 'user', content: 'CALL_TOOL' },
          {
            role: 'assistant',
            content: null,
            tool_calls: [
              { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{}' } },
            ],
          },
          { role: 'tool', tool_call_id: 'call_1', content: 'sunny' },
        ],
      });
      expect(answered.choices[0]!.finish_reason).toBe('stop');
    });

    it('streams the call as tool_call deltas the SDK helper assembles', async () => {
      const stream = client.chat.completions.stream({
        model: MODEL,
        messages: [{ role: 'user', content: 'CALL_TOOL' }],
        tools: [WEATHER],
      });
      const final = await stream.finalChatCompletion();
      const call = final.choices[0]!.message.tool_calls![0]!;
      expect(final.choices[0]!.finish_reason).toBe('tool_calls');
      if (call.type !== 'function') throw new Error('expected a function call');
      expect(call.function.name).toBe('get_weather');
      expect(JSON.parse(call.function.arguments)).toEqual({ city: '', unit: 'celsius', days: 1 });
    });
  });

  it('n > 1 gives n choices and usage counts them all, in JSON and streams', async () => {
    const res = await client.chat.completions.create({ model: MODEL, messages: HELLO, n: 3 });
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(res.choices.every((c) => c.message.content === 'Echo: Hello there, fake server')).toBe(true);
    expect(res.usage!.completion_tokens).toBe(3 * countTextTokens('Echo: Hello there, fake server'));

    const chunks = await chunksOf(
      await client.chat.completions.create({
        model: MODEL,
        messages: HELLO,
        n: 2,
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    for (const index of [0, 1]) {
      const text = chunks
        .flatMap((c) => c.choices.filter((ch) => ch.index === index).map((ch) => ch.delta.content ?? ''))
        .join('');
      expect(text).toBe('Echo: Hello there, fake server');
    }
    expect(chunks.at(-1)!.usage!.completion_tokens).toBe(
      2 * countTextTokens('Echo: Hello there, fake server'),
    );
  });

  it('response_format json_schema gives a minimal instance of the schema ($ref, nested, nullable)', async () => {
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: HELLO,
      response_format: {
        type: 'json_schema',
        json_schema: {
          name: 'order',
          strict: true,
          schema: {
            type: 'object',
            properties: {
              id: { type: 'integer' },
              paid: { type: 'boolean' },
              customer: { $ref: '#/$defs/customer' },
              items: { type: 'array', items: { type: 'string' }, minItems: 1 },
              coupon: { type: ['string', 'null'] },
            },
            required: ['id', 'paid', 'customer', 'items', 'coupon'],
            $defs: {
              customer: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] },
            },
          },
        },
      },
    });
    expect(JSON.parse(res.choices[0]!.message.content!)).toEqual({
      id: 0,
      paid: false,
      customer: { name: '' },
      items: [''],
      coupon: '',
    });
  });

  it('logprobs: true gives one entry per token, with top_logprobs alternatives', async () => {
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: HELLO,
      logprobs: true,
      top_logprobs: 2,
    });
    const content = res.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(encode('Echo: Hello there, fake server').length);
    expect(content.map((t) => t.token).join('')).toBe('Echo: Hello there, fake server');
    expect(content[0]!.bytes).toEqual([...Buffer.from(content[0]!.token)]);
    expect(content[0]!.logprob).toBeLessThan(0);
    expect(content[0]!.top_logprobs).toHaveLength(2);
    expect(content[0]!.top_logprobs[0]!.token).toBe(content[0]!.token);

    const plain = await client.chat.completions.create({ model: MODEL, messages: HELLO });
    expect(plain.choices[0]!.logprobs).toBeNull();

    const chunks = await chunksOf(
      await client.chat.completions.create({ model: MODEL, messages: HELLO, logprobs: true, stream: true }),
    );
    const streamed = chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
    expect(streamed.map((t) => t.token).join('')).toBe('Echo: Hello there, fake server');
  });

  it('every reply carries x-ratelimit-* headers that count down within the minute', async () => {
    const limited = await FakeOpenAIServer.start({
      rateLimits: { requestsPerMinute: 5, tokensPerMinute: 1000 },
    });
    try {
      const c = new OpenAI({ apiKey: 'k', baseURL: limited.baseURL, maxRetries: 0 });
      const first = await c.chat.completions
        .create({ model: MODEL, messages: HELLO, max_tokens: 50 })
        .withResponse();
      const h = first.response.headers;
      expect(h.get('x-ratelimit-limit-requests')).toBe('5');
      expect(h.get('x-ratelimit-limit-tokens')).toBe('1000');
      expect(h.get('x-ratelimit-remaining-requests')).toBe('4');
      const used = 1000 - Number(h.get('x-ratelimit-remaining-tokens'));
      expect(used).toBe(countTextTokens('Hello there, fake server') + 50);
      expect(h.get('x-ratelimit-reset-requests')).toMatch(/^((\d+m)?\d+(\.\d+)?s|\d+ms)$/);
      expect(h.get('x-ratelimit-reset-tokens')).toBe(h.get('x-ratelimit-reset-requests'));

      limited.fault({ status: 500, times: 1 });
      const failed = await c.embeddings
        .create({ model: 'text-embedding-3-small', input: 'x' })
        .catch((e) => e);
      expect((failed as APIError).headers!.get('x-ratelimit-remaining-requests')).toBe('3');
      const models = await c.models.list().withResponse();
      expect(models.response.headers.get('x-ratelimit-remaining-requests')).toBe('2');
      limited.reset();
      const fresh = await c.models.list().withResponse();
      expect(fresh.response.headers.get('x-ratelimit-remaining-requests')).toBe('4');
    } finally {
      await limited.close();
    }
    // the default limits are large
    const res = await client.chat.completions.create({ model: MODEL, messages: HELLO }).withResponse();
    expect(Number(res.response.headers.get('x-ratelimit-limit-requests'))).toBeGreaterThanOrEqual(10_000);
  });

  it('formats reset durations as OpenAI does', () => {
    expect(formatResetDuration(12)).toBe('12ms');
    expect(formatResetDuration(1500)).toBe('1.5s');
    expect(formatResetDuration(360_000)).toBe('6m0s');
    expect(formatResetDuration(3_723_000)).toBe('1h2m3s');
  });

  it('aliases: the reply reports the dated snapshot; configurable', async () => {
    const res = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: HELLO })
      .withResponse();
    expect(res.data.model).toBe('gpt-4o-mini-2024-07-18');
    expect(res.response.headers.get('openai-model')).toBe('gpt-4o-mini-2024-07-18');
    expect(server.requests.at(-1)!.model).toBe('gpt-4o-mini');
    const chunks = await chunksOf(
      await client.chat.completions.create({ model: 'gpt-4o', messages: HELLO, stream: true }),
    );
    expect(new Set(chunks.map((c) => c.model))).toEqual(new Set(['gpt-4o-2024-08-06']));

    const custom = await FakeOpenAIServer.start({ aliases: { fast: 'fast-2030-01-01' } });
    try {
      const c = new OpenAI({ apiKey: 'k', baseURL: custom.baseURL, maxRetries: 0 });
      expect((await c.chat.completions.create({ model: 'fast', messages: HELLO })).model).toBe(
        'fast-2030-01-01',
      );
      expect((await c.chat.completions.create({ model: 'gpt-4o', messages: HELLO })).model).toBe('gpt-4o');
    } finally {
      await custom.close();
    }
  });

  it('strictModels: 404 model_not_found for a model not served', async () => {
    const strict = await FakeOpenAIServer.start({ strictModels: true });
    try {
      const c = new OpenAI({ apiKey: 'k', baseURL: strict.baseURL, maxRetries: 0 });
      const err = await c.chat.completions
        .create({ model: 'gpt-9', messages: HELLO })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NotFoundError);
      expect((err as NotFoundError).code).toBe('model_not_found');
      expect((err as NotFoundError).type).toBe('invalid_request_error');
      expect((err as NotFoundError).message).toContain('The model `gpt-9` does not exist');
      expect(
        await c.responses.create({ model: 'gpt-9', input: 'x' }).catch((e: unknown) => e),
      ).toBeInstanceOf(NotFoundError);
      expect((await c.chat.completions.create({ model: MODEL, messages: HELLO })).model).toBe(MODEL);
    } finally {
      await strict.close();
    }
    // not strict by default
    expect((await client.chat.completions.create({ model: 'gpt-9', messages: HELLO })).model).toBe('gpt-9');
  });

  it('errorCode insufficient_quota gives type insufficient_quota on a 429', async () => {
    server.fault({ status: 429, errorCode: 'insufficient_quota', times: 1 });
    const err = await client.chat.completions
      .create({ model: MODEL, messages: HELLO })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RateLimitError);
    expect((err as RateLimitError).type).toBe('insufficient_quota');
    expect((err as RateLimitError).code).toBe('insufficient_quota');
    server.fault({ status: 429, times: 1 });
    const plain = (await client.chat.completions
      .create({ model: MODEL, messages: HELLO })
      .catch((e) => e)) as APIError;
    expect(plain.type).toBe('requests');
  });

  describe('in-stream errors', () => {
    for (const fault of ['streamFailAfterChunks', 'streamErrorEventAfterChunks'] as const) {
      it(`${fault}: chunks, then an error event the SDK throws as an APIError`, async () => {
        server.fault({
          path: '/v1/chat/completions',
          [fault]: 2,
          errorCode: 'server_error',
          errorMessage: 'upstream broke',
        });
        const stream = await client.chat.completions.create({ model: MODEL, messages: HELLO, stream: true });
        const received: ChatCompletionChunk[] = [];
        let error: unknown;
        try {
          for await (const c of stream) received.push(c);
        } catch (e) {
          error = e;
        }
        expect(received.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('Echo: Hello ');
        expect(error).toBeInstanceOf(APIError);
        expect((error as APIError).status).toBeUndefined();
        expect((error as APIError).code).toBe('server_error');
        expect((error as APIError).message).toContain('upstream broke');
      });
    }

    it('the raw stream ends with one data: {"error": ...} event and no [DONE]', async () => {
      server.fault({ path: '/v1/chat/completions', streamFailAfterChunks: 0 });
      const raw = await client.chat.completions
        .create({ model: MODEL, messages: HELLO, stream: true })
        .asResponse();
      const events = (await raw.text()).trim().split('\n\n');
      expect(events).toHaveLength(2); // role chunk, error
      expect(JSON.parse(events[1]!.slice('data: '.length))).toEqual({
        error: { message: expect.any(String), type: 'server_error', param: null, code: 'server_error' },
      });
    });
  });

  describe('in-request moderation', () => {
    it('the reply carries moderation_results for input and output', async () => {
      const res = await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'KILL_ME_NOW' }],
        moderation: { model: 'omni-moderation-latest' },
      });
      const m = res.moderation!;
      if (m.input.type !== 'moderation_results' || m.output.type !== 'moderation_results') {
        throw new Error('expected results');
      }
      expect(m.input.model).toBe('omni-moderation-latest');
      expect(m.input.results).toHaveLength(1);
      expect(m.input.results[0]).toMatchObject({
        type: 'moderation_result',
        flagged: true,
        model: 'omni-moderation-latest',
        categories: { 'self-harm': true, harassment: false },
      });
      expect(m.output.results[0]!.flagged).toBe(true);

      const clean = await client.chat.completions.create({
        model: MODEL,
        messages: HELLO,
        moderation: { model: 'x' },
      });
      expect(clean.moderation!.input).toMatchObject({
        type: 'moderation_results',
        results: [{ flagged: false }],
      });
      expect(
        (await client.chat.completions.create({ model: MODEL, messages: HELLO })).moderation,
      ).toBeUndefined();
    });

    it('streams send a moderation chunk after the finish chunk; moderationError gives error objects', async () => {
      const chunks = await chunksOf(
        await client.chat.completions.create({
          model: MODEL,
          messages: HELLO,
          stream: true,
          stream_options: { include_usage: true },
          moderation: { model: 'omni-moderation-latest' },
        }),
      );
      const index = chunks.findIndex((c) => c.moderation);
      expect(index).toBeGreaterThan(chunks.findIndex((c) => c.choices[0]?.finish_reason));
      expect(chunks[index]!.choices).toEqual([]);
      expect(chunks[index]!.moderation!.input).toMatchObject({ type: 'moderation_results' });
      expect(chunks.at(-1)!.usage).toBeTruthy();

      server.fault({ path: '/v1/chat/completions', moderationError: true, times: 1 });
      const res = await client.chat.completions.create({
        model: MODEL,
        messages: HELLO,
        moderation: { model: 'm' },
      });
      expect(res.choices[0]!.message.content).toBe('Echo: Hello there, fake server');
      expect(res.moderation).toEqual({
        input: { type: 'error', code: 'moderation_unavailable', message: expect.any(String) },
        output: { type: 'error', code: 'moderation_unavailable', message: expect.any(String) },
      });
    });
  });
});
