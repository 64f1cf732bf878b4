import OpenAI, { APIConnectionError, APIError, BadRequestError, RateLimitError } from 'openai';
import type { ResponseStreamEvent } from 'openai/resources/responses/responses';
import { decode, encode } from 'gpt-tokenizer/encoding/o200k_base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { countChatPromptTokens, countTextTokens, FakeOpenAIServer } from '../index.js';

const MODEL = 'gpt-4o-mini-2024-07-18';
const PROMPT = 'Hello there, fake server';
const LONG = 'one two three four five six seven eight nine ten';

async function collect(stream: AsyncIterable<ResponseStreamEvent>): Promise<ResponseStreamEvent[]> {
  const events: ResponseStreamEvent[] = [];
  for await (const e of stream) events.push(e);
  return events;
}

async function collectUntilThrow(
  stream: AsyncIterable<ResponseStreamEvent>,
): Promise<{ events: ResponseStreamEvent[]; error: unknown }> {
  const events: ResponseStreamEvent[] = [];
  try {
    for await (const e of stream) events.push(e);
  } catch (error) {
    return { events, error };
  }
  return { events, error: undefined };
}

function deltas(events: ResponseStreamEvent[]): string[] {
  return events.flatMap((e) => (e.type === 'response.output_text.delta' ? [e.delta] : []));
}

describe('FakeOpenAIServer: POST /v1/responses', () => {
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

  it('answers a response with output_text and usage counted like chat', async () => {
    const res = await client.responses.create({ model: MODEL, input: PROMPT, instructions: 'Be terse.' });

    expect(res.id).toMatch(/^resp_[0-9a-f]{48}$/);
    expect(res.object).toBe('response');
    expect(res.status).toBe('completed');
    expect(res.model).toBe(MODEL);
    expect(res.output_text).toBe(`Echo: ${PROMPT}`);
    expect(res.output).toHaveLength(1);
    expect(res.output[0]).toMatchObject({
      type: 'message',
      role: 'assistant',
      status: 'completed',
      content: [{ type: 'output_text', text: `Echo: ${PROMPT}`, annotations: [] }],
    });
    const input = countChatPromptTokens([
      { role: 'system', content: 'Be terse.' },
      { role: 'user', content: PROMPT },
    ]);
    const output = countTextTokens(`Echo: ${PROMPT}`);
    expect(res.usage).toEqual({
      input_tokens: input,
      input_tokens_details: { cached_tokens: 0 },
      output_tokens: output,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: input + output,
    });
    expect(res.instructions).toBe('Be terse.');
    expect(res.incomplete_details).toBeNull();
    expect(res.error).toBeNull();
    expect(res._request_id).toBe(server.requestsTo('/v1/responses')[0]!.requestId);
  });

  it('takes a message list with string and input_text content; echoes the last user input', async () => {
    const res = await client.responses.create({
      model: MODEL,
      input: [
        { role: 'developer', content: 'Rules.' },
        { role: 'user', content: 'first question' },
        { role: 'assistant', content: 'first answer' },
        {
          role: 'user',
          content: [
            { type: 'input_text', text: 'second' },
            { type: 'input_text', text: 'question' },
          ],
        },
      ],
    });
    expect(res.output_text).toBe('Echo: second\nquestion');
    expect(res.usage!.input_tokens).toBe(
      countChatPromptTokens([
        { role: 'developer', content: 'Rules.' },
        { role: 'user', content: 'first question' },
        { role: 'assistant', content: 'first answer' },
        { role: 'user', content: 'second\nquestion' },
      ]),
    );
  });

  it('echoes store, service_tier, metadata, safety_identifier, prompt_cache_key, temperature; resolves aliases', async () => {
    const plain = await client.responses.create({ model: 'gpt-4o-mini', input: 'hi' });
    expect(plain.model).toBe('gpt-4o-mini-2024-07-18');
    // `store` is on the wire though the SDK's Response type leaves it out
    expect((plain as unknown as { store: boolean }).store).toBe(true);
    expect(plain.service_tier).toBe('default');
    expect(plain.metadata).toEqual({});
    expect(plain.temperature).toBe(1);
    expect(plain.safety_identifier).toBeNull();

    const tuned = await client.responses.create({
      model: MODEL,
      input: 'hi',
      store: false,
      service_tier: 'flex',
      metadata: { team: 'a' },
      safety_identifier: 'user-hash',
      prompt_cache_key: 'pck',
      temperature: 0,
    });
    expect(tuned).toMatchObject({
      store: false,
      service_tier: 'flex',
      metadata: { team: 'a' },
      safety_identifier: 'user-hash',
      prompt_cache_key: 'pck',
      temperature: 0,
    });
    expect(
      (await client.responses.create({ model: MODEL, input: 'x', service_tier: 'auto' })).service_tier,
    ).toBe('default');
    expect(
      (await client.responses.create({ model: MODEL, input: 'x', service_tier: 'priority' })).service_tier,
    ).toBe('priority');
  });

  it('max_output_tokens truncates: status incomplete with reason max_output_tokens', async () => {
    const res = await client.responses.create({ model: MODEL, input: LONG, max_output_tokens: 3 });
    const full = encode(`Echo: ${LONG}`);
    expect(res.status).toBe('incomplete');
    expect(res.incomplete_details).toEqual({ reason: 'max_output_tokens' });
    expect(res.output_text).toBe(decode(full.slice(0, 3)));
    expect(res.usage!.output_tokens).toBe(3);
    expect(res.max_output_tokens).toBe(3);
  });

  it('honours cachedTokens, reasoningTokens and reply (with the responses request shape)', async () => {
    const custom = await FakeOpenAIServer.start({
      cachedTokens: 4,
      reasoningTokens: 2,
      reply: (req) => `${req.endpoint}:${req.messages.length}:${req.max_tokens ?? '-'}`,
    });
    try {
      const c = new OpenAI({ apiKey: 'k', baseURL: custom.baseURL, maxRetries: 0 });
      const res = await c.responses.create({
        model: MODEL,
        input: PROMPT,
        instructions: 'sys',
        max_output_tokens: 50,
      });
      expect(res.output_text).toBe('responses:2:50');
      expect(res.usage!.input_tokens_details.cached_tokens).toBe(4);
      expect(res.usage!.output_tokens_details.reasoning_tokens).toBe(2);
      expect(res.usage!.output_tokens).toBe(countTextTokens('responses:2:50') + 2);
    } finally {
      await custom.close();
    }
  });

  it('text.format json_schema gives a minimal JSON instance', async () => {
    const res = await client.responses.create({
      model: MODEL,
      input: 'give me a person',
      text: {
        format: {
          type: 'json_schema',
          name: 'person',
          schema: {
            type: 'object',
            properties: { name: { type: 'string' }, age: { type: 'integer' }, tags: { type: 'array' } },
            required: ['name', 'age', 'tags'],
            additionalProperties: false,
          },
        },
      },
    });
    expect(JSON.parse(res.output_text)).toEqual({ name: '', age: 0, tags: [] });
  });

  it('400s a request without input', async () => {
    const err = await client.responses.create({ model: MODEL } as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BadRequestError);
    expect((err as BadRequestError).param).toBe('input');
  });

  describe('streaming', () => {
    it('create({ stream: true }) yields the typed events in order, ending in response.completed', async () => {
      const stream = await client.responses.create({ model: MODEL, input: PROMPT, stream: true });
      const events = await collect(stream);
      expect(events.map((e) => e.type)).toEqual([
        'response.created',
        'response.in_progress',
        'response.output_item.added',
        'response.content_part.added',
        ...Array(5).fill('response.output_text.delta'),
        'response.output_text.done',
        'response.content_part.done',
        'response.output_item.done',
        'response.completed',
      ]);
      expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
      expect(deltas(events).join('')).toBe(`Echo: ${PROMPT}`);
      const done = events.find((e) => e.type === 'response.output_text.done');
      expect(done).toMatchObject({ text: `Echo: ${PROMPT}`, output_index: 0, content_index: 0 });
      const completed = events.at(-1)!;
      if (completed.type !== 'response.completed') throw new Error('expected response.completed');
      expect(completed.response.status).toBe('completed');
      expect(completed.response.usage!.output_tokens).toBe(countTextTokens(`Echo: ${PROMPT}`));
      expect(events[0]!.type === 'response.created' && events[0].response.id).toBe(completed.response.id);

      const raw = await client.responses.create({ model: MODEL, input: PROMPT, stream: true }).asResponse();
      const text = await raw.text();
      expect(text).not.toContain('[DONE]');
      expect(text).toMatch(/^event: response\.created\ndata: \{/);
    });

    it('responses.stream() accumulates to the final response', async () => {
      const stream = client.responses.stream({ model: MODEL, input: PROMPT });
      const seen: string[] = [];
      stream.on('response.output_text.delta', (e) => seen.push(e.delta));
      const final = await stream.finalResponse();
      expect(final.status).toBe('completed');
      expect(final.output_text).toBe(`Echo: ${PROMPT}`);
      expect(seen.join('')).toBe(`Echo: ${PROMPT}`);
      expect(final.usage!.total_tokens).toBeGreaterThan(0);
    });

    it('max_output_tokens ends with response.incomplete instead of response.completed', async () => {
      const events = await collect(
        await client.responses.create({ model: MODEL, input: LONG, max_output_tokens: 3, stream: true }),
      );
      const last = events.at(-1)!;
      expect(last.type).toBe('response.incomplete');
      if (last.type !== 'response.incomplete') return;
      expect(last.response.incomplete_details).toEqual({ reason: 'max_output_tokens' });
      expect(events.some((e) => e.type === 'response.completed')).toBe(false);
      expect(deltas(events).join('')).toBe(decode(encode(`Echo: ${LONG}`).slice(0, 3)));
    });

    it('streamChunkDelayMs spaces out the events', async () => {
      const slow = await FakeOpenAIServer.start({ streamChunkDelayMs: 25 });
      try {
        const c = new OpenAI({ apiKey: 'k', baseURL: slow.baseURL, maxRetries: 0 });
        const started = performance.now();
        const events = await collect(await c.responses.create({ model: MODEL, input: 'a b', stream: true }));
        // 4 + 3 deltas ("Echo: ", "a ", "b") + 4 = 11 events, 10 gaps of 25ms
        expect(events).toHaveLength(11);
        expect(performance.now() - started).toBeGreaterThanOrEqual(240);
      } finally {
        await slow.close();
      }
    });
  });

  describe('faults', () => {
    it('status 429 with retry-after-ms and insufficient_quota type', async () => {
      server.fault({ path: '/v1/responses', status: 429, retryAfterMs: 20, times: 1 });
      const err = await client.responses.create({ model: MODEL, input: 'x' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RateLimitError);
      expect((err as RateLimitError).headers.get('retry-after-ms')).toBe('20');

      server.fault({ path: '/v1/responses', status: 429, errorCode: 'insufficient_quota', times: 1 });
      const quota = (await client.responses
        .create({ model: MODEL, input: 'x' })
        .catch((e: unknown) => e)) as APIError;
      expect(quota.code).toBe('insufficient_quota');
      expect(quota.type).toBe('insufficient_quota');
      expect(quota.message).toMatch(/exceeded your current quota/);
    });

    it('delay, drop and hang', async () => {
      server.fault({ path: '/v1/responses', delayMs: 120, times: 1 });
      const t0 = performance.now();
      await client.responses.create({ model: MODEL, input: 'x' });
      expect(performance.now() - t0).toBeGreaterThanOrEqual(110);

      server.fault({ path: '/v1/responses', drop: true, times: 1 });
      expect(
        await client.responses.create({ model: MODEL, input: 'x' }).catch((e: unknown) => e),
      ).toBeInstanceOf(APIConnectionError);

      server.fault({ path: '/v1/responses', hang: true, times: 1 });
      const hung = await client.responses
        .create({ model: MODEL, input: 'x' }, { timeout: 150 })
        .catch((e: unknown) => e);
      expect(hung).toBeInstanceOf(APIConnectionError);
    });

    it('malformed JSON and a malformed first stream event', async () => {
      server.fault({ path: '/v1/responses', malformed: true, times: 2 });
      expect(
        await client.responses.create({ model: MODEL, input: 'x' }).catch((e: unknown) => e),
      ).toBeInstanceOf(SyntaxError);
      const stream = await client.responses.create({ model: MODEL, input: 'x', stream: true });
      const { events, error } = await collectUntilThrow(stream);
      expect(events).toEqual([]);
      expect(error).toBeInstanceOf(SyntaxError);
    });

    it('omitUsage and replyBody', async () => {
      server.fault({ path: '/v1/responses', omitUsage: true, times: 2 });
      const res = await client.responses.create({ model: MODEL, input: 'x' });
      expect(res.output_text).toBe('Echo: x');
      expect(res.usage).toBeUndefined();
      const events = await collect(await client.responses.create({ model: MODEL, input: 'x', stream: true }));
      const last = events.at(-1)!;
      expect(last.type === 'response.completed' && last.response.usage).toBeUndefined();

      server.fault({ path: '/v1/responses', replyBody: { hello: 'world' }, times: 1 });
      expect(await client.responses.create({ model: MODEL, input: 'x' })).toMatchObject({ hello: 'world' });
    });

    it('streamCutAfterChunks: deltas, then the iterator throws; no terminal event', async () => {
      server.fault({ path: '/v1/responses', streamCutAfterChunks: 2 });
      const { events, error } = await collectUntilThrow(
        await client.responses.create({ model: MODEL, input: LONG, stream: true }),
      );
      expect(deltas(events)).toEqual(['Echo: ', 'one ']);
      // fetch reports the cut body as `TypeError: terminated`; the SDK passes it on
      expect(error).toBeInstanceOf(TypeError);
      expect((error as Error).message).toMatch(/terminated/);
      expect(events.some((e) => e.type === 'response.completed')).toBe(false);
      // a non-streamed request is not matched by a streaming-only rule
      expect((await client.responses.create({ model: MODEL, input: 'x' })).status).toBe('completed');
    });

    it('streamStallAfterChunks: deltas, then silence until the client aborts', async () => {
      server.fault({ path: '/v1/responses', streamStallAfterChunks: 1 });
      const stream = await client.responses.create({ model: MODEL, input: LONG, stream: true });
      const seen: ResponseStreamEvent[] = [];
      const timer = setTimeout(() => stream.controller.abort(), 200);
      const t0 = performance.now();
      for await (const e of stream) seen.push(e);
      clearTimeout(timer);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(180);
      expect(deltas(seen)).toEqual(['Echo: ']);
    });

    it('omitDone: every event but no terminal one', async () => {
      server.fault({ path: '/v1/responses', omitDone: true });
      const events = await collect(
        await client.responses.create({ model: MODEL, input: PROMPT, stream: true }),
      );
      expect(events.at(-1)!.type).toBe('response.output_item.done');
      expect(deltas(events).join('')).toBe(`Echo: ${PROMPT}`);
    });

    it('streamFailAfterChunks: a response.failed event is delivered (not thrown), then the stream ends', async () => {
      server.fault({ path: '/v1/responses', streamFailAfterChunks: 2, errorMessage: 'boom' });
      const events = await collect(
        await client.responses.create({ model: MODEL, input: LONG, stream: true }),
      );
      const last = events.at(-1)!;
      expect(last.type).toBe('response.failed');
      if (last.type !== 'response.failed') return;
      expect(last.response.status).toBe('failed');
      expect(last.response.error).toEqual({ code: 'server_error', message: 'boom' });
      expect(deltas(events)).toEqual(['Echo: ', 'one ']);

      // responses.stream(): the event is emitted and finalResponse() resolves with the failed response
      const helper = client.responses.stream({ model: MODEL, input: LONG });
      const failed: string[] = [];
      helper.on('response.failed', (e) => failed.push(e.response.status!));
      const final = await helper.finalResponse();
      expect(failed).toEqual(['failed']);
      expect(final.status).toBe('failed');
      expect(final.error).toEqual({ code: 'server_error', message: 'boom' });
      expect(final.usage).toBeNull();
    });

    it('streamErrorEventAfterChunks: an error event makes the iterator throw an APIError', async () => {
      server.fault({
        path: '/v1/responses',
        streamErrorEventAfterChunks: 1,
        errorCode: 'rate_limit_exceeded',
        errorMessage: 'slow down',
      });
      const { events, error } = await collectUntilThrow(
        await client.responses.create({ model: MODEL, input: LONG, stream: true }),
      );
      expect(deltas(events)).toEqual(['Echo: ']);
      expect(error).toBeInstanceOf(APIError);
      expect((error as APIError).code).toBe('rate_limit_exceeded');
      expect((error as APIError).message).toContain('slow down');

      const helper = client.responses.stream({ model: MODEL, input: LONG });
      const err = await helper.finalResponse().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(APIError);
      expect((err as APIError).code).toBe('rate_limit_exceeded');
    });

    it('the raw error event carries type, code, message, param and sequence_number', async () => {
      server.fault({ path: '/v1/responses', streamErrorEventAfterChunks: 0 });
      const raw = await client.responses.create({ model: MODEL, input: 'x', stream: true }).asResponse();
      const text = await raw.text();
      const last = text.trim().split('\n\n').at(-1)!;
      expect(last.split('\n')[0]).toBe('event: error');
      expect(JSON.parse(last.split('\n')[1]!.slice('data: '.length))).toEqual({
        type: 'error',
        code: 'server_error',
        message: expect.any(String),
        param: null,
        sequence_number: 4,
      });
    });
  });

  describe('in-request moderation', () => {
    it('reports input and output moderation results flagged by the triggers', async () => {
      const res = await client.responses.create({
        model: MODEL,
        input: 'please FLAG_ME',
        moderation: { model: 'omni-moderation-latest' },
      });
      const moderation = res.moderation!;
      expect(moderation.input.type).toBe('moderation_result');
      if (moderation.input.type !== 'moderation_result' || moderation.output.type !== 'moderation_result')
        return;
      expect(moderation.input.flagged).toBe(true);
      expect(moderation.input.categories.harassment).toBe(true);
      expect(moderation.input.category_scores.harassment).toBe(0.95);
      expect(moderation.input.model).toBe('omni-moderation-latest');
      // the echo repeats the trigger, so the output is flagged too
      expect(moderation.output.flagged).toBe(true);

      const clean = await client.responses.create({ model: MODEL, input: 'hi', moderation: { model: 'm' } });
      expect(clean.moderation!.input).toMatchObject({
        type: 'moderation_result',
        flagged: false,
        model: 'm',
      });
      expect((await client.responses.create({ model: MODEL, input: 'hi' })).moderation).toBeUndefined();
    });

    it('streams carry it on the terminal response; the moderationError fault makes it an error object', async () => {
      const events = await collect(
        await client.responses.create({
          model: MODEL,
          input: 'FLAG_ME',
          stream: true,
          moderation: { model: 'm' },
        }),
      );
      const last = events.at(-1)!;
      if (last.type !== 'response.completed') throw new Error('expected response.completed');
      expect(last.response.moderation!.input).toMatchObject({ type: 'moderation_result', flagged: true });

      server.fault({ path: '/v1/responses', moderationError: { code: 'moderation_timeout' }, times: 1 });
      const res = await client.responses.create({ model: MODEL, input: 'hi', moderation: { model: 'm' } });
      expect(res.output_text).toBe('Echo: hi');
      expect(res.moderation!.input).toEqual({
        type: 'error',
        code: 'moderation_timeout',
        message: expect.any(String),
      });
      expect(res.moderation!.output.type).toBe('error');
    });
  });
});
