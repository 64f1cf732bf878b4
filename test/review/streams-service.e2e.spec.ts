/**
 * Review of the stream changes (c04c71c, b7b98d3): the [DONE] watch on the SDK's body reader, attempts
 * under the SDK's own timeout and the caller's signal, the stream's abort through the SDK stream's
 * controller and its idle timer. Real parts only: the real `openai` SDK over HTTP to `FakeOpenAIServer`,
 * through a small TCP tap (to see the upstream connection close, and to cut the bytes into small TCP
 * chunks), inside a real Nest app (the fixture app).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OpenAIMetricsService, type OpenAIHttpException, type StreamSummary } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { RecordingHook } from '../support/recording-hook.js';
import { TcpTap, until, upstreamErrors } from '../support/tcp-tap.js';
import { TEST_API_KEY } from '../support/sample-app.js';

const CHAT = '/v1/chat/completions';
const RESPONSES = '/v1/responses';
const PROMPT = 'one two three four five six seven eight';

async function drain(s: AsyncIterable<unknown>): Promise<{ chunks: number; error?: unknown }> {
  let chunks = 0;
  try {
    for await (const _ of s) chunks++;
    return { chunks };
  } catch (error) {
    return { chunks, error };
  }
}

type Failed = OpenAIHttpException & { summary: StreamSummary; cause?: unknown };

const user = (content = PROMPT) => ({ messages: [{ role: 'user' as const, content }] });

describe('streams (service level, real SDK over HTTP to the fake, through a TCP tap)', () => {
  let fake: FakeOpenAIServer;
  let tap: TcpTap;
  let h: FixtureHandle;
  const hook = new RecordingHook();
  const metrics = async () => upstreamErrors(await h.app.get(OpenAIMetricsService).metrics());

  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ streamChunkDelayMs: 40 });
    tap = await new TcpTap(fake.port).start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(tap.baseURL, TEST_API_KEY, {
        timeouts: { attemptMs: 400, deadlineMs: 8_000 },
        retry: { maxRetries: 1 },
      }),
      { hooks: [hook] },
    );
  });
  afterAll(async () => {
    await h?.close();
    await tap?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
    hook.clear();
    tap.chunkBytes = 0;
  });

  it('idle stall mid-stream: 504 idle, settled once with estimated usage, upstream cancelled, one upstream error', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 2 });
    const before = await metrics();
    const started = performance.now();
    const s = await h.openai.stream(user(), { user: 'stall-u' });
    const { chunks, error } = await drain(s);
    const took = performance.now() - started;
    expect(chunks).toBe(3);
    expect((error as OpenAIHttpException).getStatus()).toBe(504);
    const failed = (await s.finished.catch((e: unknown) => e)) as Failed;
    expect(failed.getStatus()).toBe(504);
    expect((failed.cause as { kind?: string }).kind).toBe('idle');
    expect(failed.summary.usage.estimated).toBe(true);
    expect(failed.summary.content).toBe('Echo: one ');
    expect(hook.settled).toHaveLength(1);
    expect(hook.released).toBe(0);
    expect(took).toBeGreaterThanOrEqual(350);
    expect(took).toBeLessThan(4_000);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
    expect(tap.lastStream()!.clientClosedFirst).toBe(true);
    expect((await metrics()) - before).toBe(1);
    const line = h.logger.records('openai call').at(-1)!;
    expect(line).toMatchObject({ status: 'incomplete', usage_estimated: true, user: 'stall-u' });
  });

  it('stall before headers: each attempt times out (SDK timeout), retried, then the fallback model answers', async () => {
    fake.fault({ path: CHAT, model: 'gpt-4o', hang: true });
    const s = await h.openai.stream(
      { ...user(), model: 'gpt-4o' },
      { fallbacks: ['gpt-4o-mini'], maxRetries: 1 },
    );
    expect(s.model).toBe('gpt-4o-mini');
    expect(s.fallbackFrom).toBe('gpt-4o');
    expect(s.attempts).toBe(3);
    const { error } = await drain(s);
    expect(error).toBeUndefined();
    const summary = await s.finished;
    expect(summary.content).toBe(`Echo: ${PROMPT}`);
    expect(summary.usage.estimated).toBe(false);
    expect(fake.requestsTo(CHAT, 'gpt-4o')).toHaveLength(2);
    expect(fake.requestsTo(CHAT, 'gpt-4o-mini')).toHaveLength(1);
    expect(hook.settled).toHaveLength(1);
    const warns = h.logger.records('openai attempt failed').slice(-2);
    expect(warns.map((w) => w.model)).toEqual(['gpt-4o', 'gpt-4o']);
  });

  it('stall before headers with no fallback: 504 (attempt), released once, the hung requests cancelled', async () => {
    fake.fault({ path: CHAT, hang: true });
    const started = performance.now();
    const err = (await h.openai
      .stream(user(), { fallbacks: false, maxRetries: 1 })
      .catch((e: unknown) => e)) as OpenAIHttpException & { cause?: unknown };
    const took = performance.now() - started;
    expect(err.getStatus()).toBe(504);
    expect((err.cause as { kind?: string }).kind).toBe('attempt');
    expect(fake.requestsTo(CHAT)).toHaveLength(2);
    expect(took).toBeGreaterThanOrEqual(750);
    expect(took).toBeLessThan(4_000);
    expect(hook.released).toBe(1);
    expect(hook.settled).toHaveLength(0);
  });

  it('a deadline shorter than the idle timeout ends a stalled stream at the deadline (504 deadline)', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 2 });
    const started = performance.now();
    const s = await h.openai.stream(user(), { attemptTimeoutMs: 5_000, deadlineMs: 700 });
    const { error } = await drain(s);
    const took = performance.now() - started;
    expect((error as OpenAIHttpException).getStatus()).toBe(504);
    expect(((error as { cause?: { kind?: string } }).cause ?? {}).kind).toBe('deadline');
    expect(took).toBeGreaterThanOrEqual(600);
    expect(took).toBeLessThan(3_000);
    expect(hook.settled).toHaveLength(1);
    expect(hook.settled[0].usage.estimated).toBe(true);
  });

  it('a slow but steady stream (gaps < idle timeout, total > idle timeout) is not cut by the idle timer', async () => {
    // 40 ms between events, ~20 events: the whole stream lasts longer than the 300 ms idle timeout.
    const s = await h.openai.stream(user(`${PROMPT} ${PROMPT}`), { attemptTimeoutMs: 300 });
    const started = performance.now();
    const { error } = await drain(s);
    expect(performance.now() - started).toBeGreaterThan(300);
    expect(error).toBeUndefined();
    expect((await s.finished).content).toBe(`Echo: ${PROMPT} ${PROMPT}`);
  });

  it('caller signal already aborted: 499 before anything is sent, nothing reserved left open', async () => {
    const c = new AbortController();
    c.abort(new Error('gone'));
    const err = (await h.openai
      .stream(user(), { signal: c.signal })
      .catch((e: unknown) => e)) as OpenAIHttpException;
    expect(err.getStatus()).toBe(499);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
    expect(hook.settled).toHaveLength(0);
    expect(hook.reserved.length).toBe(hook.released);
  });

  it('caller aborts while waiting for the headers: 499 (not 504), not retried, released once, request cancelled', async () => {
    fake.fault({ path: CHAT, delayMs: 2_000 });
    const c = new AbortController();
    setTimeout(() => c.abort(new Error('client left')), 150);
    const started = performance.now();
    const err = (await h.openai
      .stream(user(), { signal: c.signal, attemptTimeoutMs: 1_500 })
      .catch((e: unknown) => e)) as OpenAIHttpException;
    expect(err.getStatus()).toBe(499);
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    expect(hook.released).toBe(1);
    expect(hook.settled).toHaveLength(0);
  });

  it('caller aborts mid-stream (chat): 499, settled once, no upstream error counted, upstream cancelled', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 3 });
    const before = await metrics();
    const c = new AbortController();
    const s = await h.openai.stream(user(), { signal: c.signal, attemptTimeoutMs: 5_000 });
    let chunks = 0;
    let error: unknown;
    try {
      for await (const _ of s) {
        chunks++;
        if (chunks === 2) setTimeout(() => c.abort(new Error('client left')), 50);
      }
    } catch (e) {
      error = e;
    }
    expect(chunks).toBeGreaterThanOrEqual(2);
    expect((error as OpenAIHttpException | undefined)?.getStatus()).toBe(499);
    const failed = (await s.finished.catch((e: unknown) => e)) as Failed;
    expect(failed.getStatus()).toBe(499);
    expect(failed.summary.usage.estimated).toBe(true);
    expect(hook.settled).toHaveLength(1);
    expect(hook.released).toBe(0);
    expect((await metrics()) - before).toBe(0);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
    expect(tap.lastStream()!.clientClosedFirst).toBe(true);
    const line = h.logger.records('openai call').at(-1)!;
    expect(line.status).toBe('incomplete');
    expect(line.error).toBeUndefined();
  });

  it('caller aborts mid-stream (Responses API): 499, settled once, no upstream error counted', async () => {
    fake.fault({ path: RESPONSES, streamStallAfterChunks: 3 });
    const before = await metrics();
    const c = new AbortController();
    const s = await h.openai.streamResponse({ input: PROMPT }, { signal: c.signal, attemptTimeoutMs: 5_000 });
    setTimeout(() => c.abort(new Error('client left')), 300);
    const { error } = await drain(s);
    expect((error as OpenAIHttpException | undefined)?.getStatus()).toBe(499);
    const failed = (await s.finished.catch((e: unknown) => e)) as Failed;
    expect(failed.getStatus()).toBe(499);
    expect(hook.settled).toHaveLength(1);
    expect((await metrics()) - before).toBe(0);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
  });

  it('caller aborts after the end: the completed stream stays completed, settled once', async () => {
    const c = new AbortController();
    const s = await h.openai.stream(user(), { signal: c.signal });
    const { error } = await drain(s);
    expect(error).toBeUndefined();
    c.abort(new Error('late'));
    const summary = await s.finished;
    expect(summary.usage.estimated).toBe(false);
    await new Promise((r) => setTimeout(r, 50));
    expect(hook.settled).toHaveLength(1);
    expect(h.logger.records('openai call').at(-1)!.status).toBe('ok');

    const r = await h.openai.streamResponse({ input: PROMPT }, { signal: c.signal }).catch((e: unknown) => e);
    // The same (now aborted) signal refuses a new call.
    expect((r as OpenAIHttpException).getStatus()).toBe(499);
  });

  it('caller aborts a Responses stream after the end: still completed', async () => {
    const c = new AbortController();
    const s = await h.openai.streamResponse({ input: PROMPT }, { signal: c.signal });
    const { error } = await drain(s);
    expect(error).toBeUndefined();
    c.abort();
    const summary = await s.finished;
    expect(summary.content).toBe(`Echo: ${PROMPT}`);
    expect(hook.settled).toHaveLength(1);
  });

  it('consumer break: 499, settled once, no upstream error, upstream connection closed', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 4 });
    const before = await metrics();
    const s = await h.openai.stream(user(), { attemptTimeoutMs: 5_000 });
    let n = 0;
    const t0 = performance.now();
    for await (const _ of s) if (++n === 2) break;
    const tBreak = performance.now() - t0;
    const failed = (await s.finished.catch((e: unknown) => e)) as Failed;
    const tFinished = performance.now() - t0;
    // Leaving the loop must not wait on the upstream (the body's cancellation).
    expect(tBreak).toBeLessThan(1_000);
    expect(tFinished).toBeLessThan(1_000);
    expect(failed.getStatus()).toBe(499);
    expect(hook.settled).toHaveLength(1);
    expect((await metrics()) - before).toBe(0);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
    expect(tap.lastStream()!.clientClosedFirst).toBe(true);
  });

  it('stream.abort() mid-stream: 499, settled once', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 3 });
    const s = await h.openai.stream(user(), { attemptTimeoutMs: 5_000 });
    let n = 0;
    let error: unknown;
    try {
      for await (const _ of s) if (++n === 2) s.abort();
    } catch (e) {
      error = e;
    }
    expect((error as OpenAIHttpException).getStatus()).toBe(499);
    expect(hook.settled).toHaveLength(1);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
  });

  it('a chat stream without [DONE] is incomplete: 502 upstream_stream_incomplete, real usage kept', async () => {
    fake.fault({ path: CHAT, omitDone: true });
    const s = await h.openai.stream(user());
    const { error } = await drain(s);
    expect((error as OpenAIHttpException).getStatus()).toBe(502);
    const failed = (await s.finished.catch((e: unknown) => e)) as Failed;
    expect(failed.body.error).toBe('upstream_stream_incomplete');
    expect(failed.summary.usage.estimated).toBe(false);
    expect(h.logger.records('openai call').at(-1)!.status).toBe('incomplete');
  });

  it('[DONE] split across small TCP chunks is still seen: the stream completes', async () => {
    tap.chunkBytes = 3;
    const s = await h.openai.stream(user());
    const { error } = await drain(s);
    expect(error).toBeUndefined();
    const summary = await s.finished;
    expect(summary.content).toBe(`Echo: ${PROMPT}`);
    expect(h.logger.records('openai call').at(-1)!.status).toBe('ok');
  });

  it('a stream cut into small TCP chunks without [DONE] is still incomplete', async () => {
    tap.chunkBytes = 5;
    fake.fault({ path: CHAT, omitDone: true });
    const s = await h.openai.stream(user());
    const { error } = await drain(s);
    expect((error as OpenAIHttpException).getStatus()).toBe(502);
  });

  it('Responses API: a complete stream completes; one without its terminal event is a 502 (no [DONE] watch)', async () => {
    const ok = await h.openai.streamResponse({ input: PROMPT });
    expect((await drain(ok)).error).toBeUndefined();
    expect((await ok.finished).content).toBe(`Echo: ${PROMPT}`);
    fake.fault({ path: RESPONSES, omitDone: true });
    const cut = await h.openai.streamResponse({ input: PROMPT });
    const { error } = await drain(cut);
    expect((error as OpenAIHttpException).getStatus()).toBe(502);
    expect(hook.settled).toHaveLength(2);
  });

  it('Responses API idle stall: 504 idle, settled once', async () => {
    fake.fault({ path: RESPONSES, streamStallAfterChunks: 1 });
    const s = await h.openai.streamResponse({ input: PROMPT });
    const { error } = await drain(s);
    expect((error as OpenAIHttpException).getStatus()).toBe(504);
    expect(hook.settled).toHaveLength(1);
    expect(hook.settled[0].usage.estimated).toBe(true);
  });

  it('a stream nobody iterates is ended after the idle time and its connection released', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 1 });
    const s = await h.openai.stream(user());
    const failed = (await s.finished.catch((e: unknown) => e)) as Failed;
    expect(failed.getStatus()).toBe(504);
    expect(hook.settled).toHaveLength(1);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
  });

  it('50 concurrent streams all complete, none reported incomplete', async () => {
    const streams = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        h.openai.stream(user(`${PROMPT} #${i}`), { attemptTimeoutMs: 5_000 }),
      ),
    );
    const results = await Promise.all(streams.map((s) => drain(s)));
    expect(results.filter((r) => r.error !== undefined)).toEqual([]);
    const summaries = await Promise.all(streams.map((s) => s.finished));
    summaries.forEach((s, i) => expect(s.content).toBe(`Echo: ${PROMPT} #${i}`));
    expect(hook.settled).toHaveLength(50);
    const lines = h.logger.records('openai call').slice(-50);
    expect(lines.filter((l) => l.status !== 'ok')).toEqual([]);
  });

  it('caller aborts after the headers but before iterating: iteration ends at once with 499, settled once', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 2 });
    const c = new AbortController();
    const s = await h.openai.stream(user(), { signal: c.signal, attemptTimeoutMs: 5_000 });
    c.abort(new Error('client left'));
    const started = performance.now();
    const { error } = await drain(s);
    expect(performance.now() - started).toBeLessThan(1_000);
    expect((error as OpenAIHttpException | undefined)?.getStatus()).toBe(499);
    expect(hook.settled).toHaveLength(1);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
  });

  it('a stall before the headers that outlasts the deadline: 504 deadline, released once', async () => {
    fake.fault({ path: CHAT, hang: true });
    const err = (await h.openai
      .stream(user(), { attemptTimeoutMs: 5_000, deadlineMs: 500, fallbacks: false })
      .catch((e: unknown) => e)) as OpenAIHttpException & { cause?: { kind?: string } };
    expect(err.getStatus()).toBe(504);
    expect(err.cause?.kind).toBe('deadline');
    expect(hook.released).toBe(1);
  });

  it('a non-streamed chat under a caller signal: an SDK timeout is a 504, a caller abort a 499', async () => {
    fake.fault({ path: CHAT, hang: true, times: 2 });
    const c = new AbortController();
    const timedOut = (await h.openai
      .chat(user(), { signal: c.signal, fallbacks: false })
      .catch((e: unknown) => e)) as OpenAIHttpException;
    expect(timedOut.getStatus()).toBe(504);
    fake.fault({ path: CHAT, delayMs: 2_000 });
    setTimeout(() => c.abort(), 100);
    const aborted = (await h.openai
      .chat(user(), { signal: c.signal })
      .catch((e: unknown) => e)) as OpenAIHttpException;
    expect(aborted.getStatus()).toBe(499);
  });

  it('the API key never appears in stream errors or logs', async () => {
    fake.fault({ path: CHAT, streamCutAfterChunks: 1, times: 1 });
    fake.fault({ path: CHAT, hang: true, times: 2 });
    const errs: unknown[] = [];
    const s = await h.openai.stream(user());
    errs.push((await drain(s)).error);
    errs.push(await h.openai.stream(user(), { fallbacks: false }).catch((e: unknown) => e));
    for (const e of errs) {
      expect(e).toBeDefined();
      const he = e as OpenAIHttpException & { cause?: unknown };
      expect(JSON.stringify(he.getResponse())).not.toContain(TEST_API_KEY);
      expect(String(he.stack)).not.toContain(TEST_API_KEY);
      expect(JSON.stringify(he.cause ?? null)).not.toContain(TEST_API_KEY);
    }
    expect(h.logger.text()).not.toContain(TEST_API_KEY);
    expect(h.logger.text()).not.toContain(TEST_API_KEY.slice(8, 30));
  });
});

// Its own app and fake (and so its own Nest logger): kept apart from the suite above, whose log lines it would take.
describe('the [DONE] watch matches the sentinel as an SSE line, not anywhere in the bytes', () => {
  it('a chat stream that ends without [DONE], but whose chunks carry the text "data: [DONE]" (here in the reported model), is incomplete', async () => {
    const quoted = await FakeOpenAIServer.start({ aliases: { 'gpt-4o-mini': 'gpt-4o-mini data: [DONE]' } });
    const q = await startFixtureApp('express', fixtureOptions(quoted.baseURL, TEST_API_KEY));
    try {
      quoted.fault({ path: CHAT, omitDone: true });
      const s = await q.openai.stream({ ...user(), model: 'gpt-4o-mini' });
      const { error } = await drain(s);
      expect((error as OpenAIHttpException | undefined)?.getStatus()).toBe(502);
      expect((await s.finished.catch((e: unknown) => e)) instanceof Error).toBe(true);
    } finally {
      await q.close();
      await quoted.close();
    }
  });
});

describe('a rotated key (function apiKey: the 401 is re-sent through the key-refresh fetch)', () => {
  it('the resent chat stream is still watched: without [DONE] it is a 502, with it ok', async () => {
    const fake = await FakeOpenAIServer.start({ apiKeys: ['sk-new-key-000000000000000000000000'] });
    let calls = 0;
    const apiKey = async () =>
      ++calls === 1 ? 'sk-old-key-000000000000000000000000' : 'sk-new-key-000000000000000000000000';
    const q = await startFixtureApp('express', fixtureOptions(fake.baseURL, apiKey));
    try {
      fake.fault({ path: CHAT, omitDone: true, times: 2 });
      const cut = await q.openai.stream(user());
      expect(((await drain(cut)).error as OpenAIHttpException | undefined)?.getStatus()).toBe(502);
      expect(fake.requestsTo(CHAT).length).toBeGreaterThanOrEqual(2);
      fake.reset();
      const ok = await q.openai.stream(user());
      expect((await drain(ok)).error).toBeUndefined();
      expect((await ok.finished).content).toBe(`Echo: ${PROMPT}`);
    } finally {
      await q.close();
      await fake.close();
    }
  });
});
