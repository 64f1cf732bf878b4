import { Logger } from '@nestjs/common';
import { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from 'openai';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import { AttemptTimeoutError } from '../errors/map-upstream-error.js';
import type { OpenAIModuleOptions } from '../options/openai-module-options.interface.js';
import { CallExecutor } from './call-executor.js';
import type { Attempt, SentReply } from './endpoint-adapter.js';
import type { PreparedCall } from './prepared-call.js';
import type { CallOptions } from './upstream-call.js';

/** An SDK error as the SDK builds it from a reply (status, body, headers). */
const upstream = (status: number, headers: Record<string, string> = {}, code?: string) =>
  APIError.generate(status, { error: { message: 'x', code } }, undefined, new Headers(headers));

const reply = (data: string): SentReply<string> => ({
  data,
  response: new Response(null, { headers: { 'x-request-id': `req_${data}` } }),
});

function setup(options: OpenAIModuleOptions = {}, callOptions: CallOptions = {}, fallbacks: string[] = []) {
  const resolved = resolveOpenAIOptions({
    environment: 'development',
    apiKey: 'sk-test-0000000000000000',
    logging: { config: false },
    retry: { maxRetries: 2, initialDelayMs: 100, maxDelayMs: 1_000, maxRetryAfterMs: 5_000 },
    timeouts: { attemptMs: 1_000, deadlineMs: 10_000 },
    ...options,
  });
  const attempts: Array<{ model: string; at: number }> = [];
  const executor = new CallExecutor(resolved, { attempt: () => undefined });
  const prep: PreparedCall = {
    call: {
      endpoint: 'chat.completions',
      model: 'm1',
      stream: false,
      promptTokens: 0,
      maxOutputTokens: 0,
      candidates: ['m1', ...fallbacks],
    },
    body: {},
    fallbacks,
    options: callOptions,
    started: performance.now(),
  };
  /** Runs the executor with `script(model, n)` answering attempt n (0-based) of the call. */
  const run = (script: (model: string, n: number, a: Attempt) => Promise<SentReply<string>>) =>
    executor.execute(prep, (model, a) => {
      attempts.push({ model, at: performance.now() });
      return script(model, attempts.length - 1, a);
    });
  return { run, attempts };
}

/**
 * An attempt that never answers: it ends as the SDK ends one, with `APIConnectionTimeoutError` when its
 * `timeout` passes, or `APIUserAbortError` when the caller's signal aborts first.
 */
const hang = (a: Attempt) =>
  new Promise<never>((_, reject) => {
    const timer = setTimeout(() => reject(new APIConnectionTimeoutError()), a.timeoutMs);
    a.signal?.addEventListener('abort', () => (clearTimeout(timer), reject(new APIUserAbortError())), {
      once: true,
    });
  });

describe('CallExecutor', () => {
  beforeEach(() => {
    Logger.overrideLogger(false); // the executor warns per failed attempt
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('retries retryable errors with full-jitter backoff under the ceiling, then succeeds', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(1); // the ceiling itself: 100, then 200 ms
    const { run, attempts } = setup();
    const done = run(async (_m, n) => {
      if (n < 2) throw upstream(500);
      return reply('ok');
    });
    await vi.runAllTimersAsync();
    const ok = await done;
    expect(ok).toMatchObject({ data: 'ok', attempts: 3, model: 'm1', openaiRequestId: 'req_ok' });
    expect(attempts.map((a) => Math.round(a.at - attempts[0].at))).toEqual([0, 100, 300]);
  });

  it('honours retry-after-ms exactly', async () => {
    const { run, attempts } = setup();
    const done = run(async (_m, n) => {
      if (n === 0) throw upstream(429, { 'retry-after-ms': '750' });
      return reply('ok');
    });
    await vi.runAllTimersAsync();
    await done;
    expect(Math.round(attempts[1].at - attempts[0].at)).toBe(750);
  });

  it('a wait over maxRetryAfterMs is not slept: the next fallback goes at once', async () => {
    const { run, attempts } = setup({}, {}, ['m2']);
    const done = run(async (model) => {
      if (model === 'm1') throw upstream(429, { 'retry-after': '120' });
      return reply('fallback');
    });
    await vi.runAllTimersAsync();
    expect(await done).toMatchObject({ model: 'm2', fallbackFrom: 'm1', attempts: 2 });
    expect(attempts[1].at - attempts[0].at).toBe(0);
  });

  it('without a fallback, a wait over the cap fails at once with 429 upstream_rate_limited and the wait', async () => {
    const { run, attempts } = setup();
    const done = run(async () => {
      throw upstream(429, { 'retry-after': '120' });
    });
    const failed = done.catch((e: unknown) => e);
    await vi.runAllTimersAsync();
    expect(await failed).toMatchObject({
      status: 429,
      response: { error: 'upstream_rate_limited', retry_after: 120 },
      headers: { 'retry-after': '120' },
    });
    expect(attempts).toHaveLength(1);
  });

  it('does not retry a 400 or insufficient_quota', async () => {
    const { run, attempts } = setup();
    await expect(run(async () => Promise.reject(upstream(400)))).rejects.toMatchObject({ status: 400 });
    await expect(
      run(async () => Promise.reject(upstream(429, {}, 'insufficient_quota'))),
    ).rejects.toMatchObject({ status: 502, response: { error: 'upstream_quota_exceeded' } });
    expect(attempts).toHaveLength(2);
  });

  it('x-should-retry: false stops retries of a 500', async () => {
    const { run, attempts } = setup();
    await expect(
      run(async () => Promise.reject(upstream(500, { 'x-should-retry': 'false' }))),
    ).rejects.toMatchObject({ status: 502 });
    expect(attempts).toHaveLength(1);
  });

  it('times out each attempt and gives up at the deadline, with no attempt started after it', async () => {
    const { run, attempts } = setup({ timeouts: { attemptMs: 1_000, deadlineMs: 2_500 } });
    const done = run(async (_m, _n, a) => hang(a));
    const failed = done.catch((e: unknown) => e);
    await vi.runAllTimersAsync();
    expect(await failed).toMatchObject({ status: 504 });
    for (const a of attempts) expect(a.at - attempts[0].at).toBeLessThan(2_500);
    expect(attempts.length).toBeGreaterThanOrEqual(2);
  });

  it('falls back in order after a model keeps failing, each model with its own retries', async () => {
    const { run, attempts } = setup({ retry: { maxRetries: 1, initialDelayMs: 10, maxDelayMs: 10 } }, {}, [
      'm2',
      'm3',
    ]);
    const done = run(async (model) => {
      if (model !== 'm3') throw new APIConnectionError({ message: 'down' });
      return reply('third');
    });
    await vi.runAllTimersAsync();
    expect(await done).toMatchObject({ model: 'm3', fallbackFrom: 'm1', attempts: 5 });
    expect(attempts.map((a) => a.model)).toEqual(['m1', 'm1', 'm2', 'm2', 'm3']);
  });

  it('a caller abort during a backoff wait ends the call at once with 499, no further attempt', async () => {
    const controller = new AbortController();
    const { run, attempts } = setup({}, { signal: controller.signal });
    const done = run(async () => Promise.reject(upstream(500, { 'retry-after-ms': '3000' })));
    const failed = done.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(1_000);
    controller.abort();
    await vi.runAllTimersAsync();
    expect(await failed).toMatchObject({ status: 499 });
    expect(attempts).toHaveLength(1);
  });

  it("the attempt timeout is what the SDK gets; its timeout is reported as the attempt's (504)", async () => {
    const { run } = setup({ timeouts: { attemptMs: 400, deadlineMs: 10_000 } }, { maxRetries: 0 });
    let seen: Attempt | undefined;
    const done = run(async (_m, _n, a) => {
      seen = a;
      return hang(a);
    });
    const failed = done.catch((e: unknown) => e);
    await vi.runAllTimersAsync();
    const err = (await failed) as { status: number; cause?: unknown };
    expect(err.status).toBe(504);
    expect(err.cause).toBeInstanceOf(AttemptTimeoutError);
    expect((err.cause as AttemptTimeoutError).kind).toBe('attempt');
    expect(seen?.timeoutMs).toBe(400);
    // No controller of the executor's own: the SDK is given only the caller's signal (none here).
    expect(seen?.signal).toBeUndefined();
  });

  it("an attempt cut short by the deadline is the deadline's timeout, with the remaining time as its timeout", async () => {
    const { run } = setup({ timeouts: { attemptMs: 1_000, deadlineMs: 1_500 } }, { maxRetries: 1 });
    const seen: Attempt[] = [];
    const done = run(async (_m, _n, a) => {
      seen.push(a);
      return hang(a);
    });
    const failed = done.catch((e: unknown) => e);
    await vi.runAllTimersAsync();
    const err = (await failed) as { status: number; cause?: unknown };
    expect(err.status).toBe(504);
    expect(seen.map((a) => a.timeoutMs)[0]).toBe(1_000);
    expect(seen.length).toBe(2);
    expect(seen[1].timeoutMs).toBeLessThan(500);
    expect((err.cause as AttemptTimeoutError).kind).toBe('deadline');
  });
});
