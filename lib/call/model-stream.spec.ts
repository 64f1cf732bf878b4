import { Logger } from '@nestjs/common';
import OpenAI from 'openai';
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { sseCompleted, sseCompletionFetch } from '../client/sse-completion.js';
import { chatCompletionsStreamAdapter } from '../endpoints/chat-completions/chat-completions.adapter.js';
import { responsesStreamAdapter } from '../endpoints/responses/responses.adapter.js';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import { CallPipeline } from './call-pipeline.js';
import type { StreamAdapter, UpstreamEventStream } from './endpoint-adapter.js';
import { ModelStream, type StreamOutputCheck } from './model-stream.js';
import type { PreparedCall } from './prepared-call.js';
import type { CallReservation, SettledCall } from './upstream-call.js';

type Step<E> = { event: E; afterMs?: number } | { throw: Error; afterMs?: number } | { stallMs: number };

/** An async iterable of events with timed gaps, that ends (or throws) as scripted and honours an abort. */
function scripted<E>(steps: Array<Step<E>>, controller: AbortController): UpstreamEventStream<E> {
  const { signal } = controller;
  const wait = (ms: number) =>
    new Promise<void>((resolve, reject) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener('abort', () => (clearTimeout(t), reject(signal.reason)), { once: true });
    });
  return {
    controller,
    async *[Symbol.asyncIterator]() {
      for (const step of steps) {
        if ('stallMs' in step) await wait(step.stallMs);
        else {
          if (step.afterMs) await wait(step.afterMs);
          if (signal.aborted) throw signal.reason;
          if ('throw' in step) throw step.throw;
          yield step.event;
        }
      }
    },
  };
}

const chunk = (content: string, extra: object = {}) =>
  ({
    id: 'c',
    object: 'chat.completion.chunk',
    created: 0,
    model: 'm',
    choices: [{ index: 0, delta: { content }, finish_reason: null }],
    ...extra,
  }) as unknown as OpenAI.Chat.Completions.ChatCompletionChunk;
const usageChunk = {
  id: 'c',
  object: 'chat.completion.chunk',
  created: 0,
  model: 'm',
  choices: [],
  usage: { prompt_tokens: 7, completion_tokens: 2, total_tokens: 9 },
} as unknown as OpenAI.Chat.Completions.ChatCompletionChunk;

function setup() {
  Logger.overrideLogger(false);
  const options = resolveOpenAIOptions({
    environment: 'development',
    apiKey: 'sk-test-0000000000000000',
    logging: { config: false },
    timeouts: { attemptMs: 1_000, deadlineMs: 60_000 },
    moderation: { streamCheckIntervalChars: 10 },
  });
  const pipeline = new CallPipeline(
    new OpenAI({ apiKey: 'sk-test', baseURL: 'http://127.0.0.1:9/v1' }),
    options,
    [],
  );
  const settled: SettledCall[] = [];
  let released = 0;
  const reservation: CallReservation = {
    settle: (s) => void settled.push(s),
    release: () => void released++,
  };
  const prep: PreparedCall = {
    call: {
      endpoint: 'chat.completions',
      model: 'gpt-4o-mini-2024-07-18',
      stream: true,
      promptTokens: 7,
      maxOutputTokens: 100,
      candidates: ['gpt-4o-mini-2024-07-18'],
    },
    body: {},
    fallbacks: [],
    options: {},
    started: performance.now(),
  };
  /** A stream over `steps`; for chat, the reply's wire ended with `data: [DONE]` (see `endedWithDone`). */
  function open<E>(adapter: StreamAdapter<E>, steps: Array<Step<E>>, check?: StreamOutputCheck) {
    const controller = new AbortController();
    const ok = {
      data: scripted(steps, controller),
      response: endedWithDone,
      model: prep.call.model,
      attempts: 1,
      upstreamMs: 0,
    };
    return new ModelStream<E>(pipeline, prep, ok, [reservation], adapter, check);
  }
  return { open, settled, released: () => released };
}

async function drain<E>(s: ModelStream<E>): Promise<unknown> {
  try {
    for await (const _ of s) void _;
    return undefined;
  } catch (err) {
    return err;
  }
}

/** A chat event-stream reply that came through the client's fetch and was read to its `data: [DONE]`. */
let endedWithDone: Response;

describe('ModelStream', () => {
  beforeAll(async () => {
    const body = 'data: {"choices":[]}\n\ndata: [DONE]\n\n';
    const reply = async () => new Response(body, { headers: { 'content-type': 'text/event-stream' } });
    endedWithDone = await sseCompletionFetch(reply)('http://127.0.0.1:1/v1/chat/completions');
    const reader = endedWithDone.body!.getReader();
    while (!(await reader.read()).done);
    if (sseCompleted(endedWithDone) !== true) throw new Error('the [DONE] watch did not see the sentinel');
  });
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('a complete chat stream resolves with the text and the upstream usage, settled once', async () => {
    const { open, settled } = setup();
    const s = open(chatCompletionsStreamAdapter, [
      { event: chunk('Hel') },
      { event: chunk('lo') },
      { event: usageChunk },
    ]);
    const done = drain(s);
    await vi.runAllTimersAsync();
    expect(await done).toBeUndefined();
    const summary = await s.finished;
    expect(summary).toMatchObject({
      content: 'Hello',
      usage: { prompt_tokens: 7, completion_tokens: 2, estimated: false },
    });
    expect(settled).toHaveLength(1);
  });

  it('a stall past the idle timeout ends with 504 and is accounted from what was received (estimated)', async () => {
    const { open, settled } = setup();
    const s = open(chatCompletionsStreamAdapter, [{ event: chunk('partial text') }, { stallMs: 5_000 }]);
    const done = drain(s);
    await vi.advanceTimersByTimeAsync(1_500);
    expect(await done).toMatchObject({ status: 504 });
    await expect(s.finished).rejects.toMatchObject({ status: 504 });
    expect(settled).toHaveLength(1);
    expect(settled[0].usage).toMatchObject({ estimated: true, prompt_tokens: 7 });
    expect(settled[0].usage.completion_tokens).toBeGreaterThan(0);
  });

  it('a Responses stream ends cleanly only on response.completed; response.failed is a 502, accounted', async () => {
    const { open, settled } = setup();
    const delta = (d: string) =>
      ({ type: 'response.output_text.delta', delta: d }) as OpenAI.Responses.ResponseStreamEvent;
    const ok = open(responsesStreamAdapter, [
      { event: delta('a') },
      {
        event: {
          type: 'response.completed',
          response: { usage: { input_tokens: 3, output_tokens: 1, total_tokens: 4 } },
        } as unknown as OpenAI.Responses.ResponseStreamEvent,
      },
    ]);
    const failed = open(responsesStreamAdapter, [
      { event: delta('b') },
      {
        event: {
          type: 'response.failed',
          response: { error: { code: 'server_error' } },
        } as unknown as OpenAI.Responses.ResponseStreamEvent,
      },
      { event: delta('never read') },
    ]);
    const noEnd = open(responsesStreamAdapter, [{ event: delta('c') }]);
    const results = Promise.all([drain(ok), drain(failed), drain(noEnd)]);
    await vi.runAllTimersAsync();
    const [a, b, c] = await results;
    expect(a).toBeUndefined();
    expect(b).toMatchObject({ status: 502, response: { error: 'upstream_error' } });
    expect(c).toMatchObject({ status: 502, response: { error: 'upstream_stream_incomplete' } });
    expect((await failed.finished.catch((e: { summary?: { content: string } }) => e.summary))?.content).toBe(
      'b',
    );
    expect(settled).toHaveLength(3);
  });

  it('abort() cancels the upstream: 499, settled once with what was received', async () => {
    const { open, settled, released } = setup();
    const s = open(chatCompletionsStreamAdapter, [
      { event: chunk('one ') },
      { event: chunk('two'), afterMs: 500 },
    ]);
    const done = drain(s);
    await vi.advanceTimersByTimeAsync(100);
    s.abort();
    await vi.runAllTimersAsync();
    expect(await done).toMatchObject({ status: 499 });
    expect(settled).toHaveLength(1);
    expect(settled[0].usage.estimated).toBe(true);
    expect(released()).toBe(0);
  });

  it('output moderation checks at intervals and ends a flagged stream with 422 output_flagged', async () => {
    const { open } = setup();
    const seen: string[] = [];
    const check: StreamOutputCheck = {
      endpoint: async (text) => {
        seen.push(text);
        return text.includes('BAD')
          ? { flagged: true, categories: ['violence'] }
          : { flagged: false, categories: [] };
      },
    };
    const s = open(
      chatCompletionsStreamAdapter,
      [{ event: chunk('0123456789') }, { event: chunk('BAD words.') }, { event: chunk('more') }],
      check,
    );
    const done = drain(s);
    await vi.runAllTimersAsync();
    expect(await done).toMatchObject({
      status: 422,
      response: { error: 'output_flagged', categories: ['violence'] },
    });
    // Checked each time 10 more characters arrived; the flagged text ends the stream before "more".
    expect(seen).toEqual(['0123456789', '0123456789BAD words.']);
    expect(s.flaggedCategories).toEqual(['violence']);
  });

  it('a stream nobody iterates ends after the idle timeout and releases its hold as a settlement', async () => {
    const { open, settled } = setup();
    const s = open(chatCompletionsStreamAdapter, [{ event: chunk('x') }]);
    await vi.advanceTimersByTimeAsync(1_100);
    await expect(s.finished).rejects.toMatchObject({ status: 504 });
    expect(settled).toHaveLength(1);
    await expect(drain(s)).resolves.toMatchObject({ status: 504 });
  });
});
