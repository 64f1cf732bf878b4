import { HttpStatus } from '@nestjs/common';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CallReservation, SettledCall, UpstreamCall } from '../call/upstream-call.js';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import { RequestContextStore } from '../request-context/request-context.js';
import type { LimitsOptions } from '../options/openai-module-options.interface.js';
import type { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { MemoryStore } from '../storage/memory.store.js';
import { RateLimitExceededException, TokenReservationTooLargeException } from './rate-limit.exceptions.js';
import { RateLimitService } from './rate-limit.service.js';
import { TokenLimitHook } from './token-limit.hook.js';

const call = (over: Partial<UpstreamCall> = {}): UpstreamCall => ({
  endpoint: 'chat.completions',
  model: 'gpt-4o-mini-2024-07-18',
  stream: false,
  user: 'u1',
  promptTokens: 40,
  maxOutputTokens: 60,
  candidates: ['gpt-4o-mini-2024-07-18'],
  ...over,
});
const settled = (total: number): SettledCall => ({
  model: 'm',
  usage: {
    prompt_tokens: 40,
    cached_tokens: 0,
    completion_tokens: total - 40,
    reasoning_tokens: 0,
    total_tokens: total,
    estimated: false,
  },
  attempts: 1,
  latencyMs: 1,
});
const TOKENS = [{ name: 'minute', limit: 250, ttl: 60_000 }];

describe('TokenLimitHook', () => {
  let store: MemoryStore;
  let limits: RateLimitService;
  let hook: TokenLimitHook;
  let rejections: Array<[string, string]>;
  const used = async (user = 'u1') => (await limits.reserveTokens(user, 0, TOKENS)).windows[0].used;
  const setup = (l: LimitsOptions = { tokens: TOKENS }) => {
    const options = resolveOpenAIOptions({ environment: 'test', apiKey: 'sk-test', limits: l });
    limits = new RateLimitService(store, options);
    rejections = [];
    const metrics = {
      rateLimited: (kind: string, window: string) => rejections.push([kind, window]),
    } as unknown as OpenAIMetricsService;
    hook = new TokenLimitHook(limits, metrics, store, options);
  };
  beforeEach(() => {
    store = new MemoryStore();
    setup();
  });
  afterEach(async () => {
    await store.close();
  });

  it('reserves prompt tokens plus max output tokens, and settles to usage.total_tokens', async () => {
    const r = (await hook.reserve(call())) as CallReservation;
    expect(await used()).toBe(100);
    await r.settle(settled(55));
    expect(await used()).toBe(55);
    // exactly once: a second settle or a release does nothing
    await r.settle(settled(90));
    await r.release();
    expect(await used()).toBe(55);
  });

  it('release gives the whole reservation back, once', async () => {
    const r = (await hook.reserve(call())) as CallReservation;
    const r2 = (await hook.reserve(call())) as CallReservation;
    expect(await used()).toBe(200);
    await r.release();
    await r.release();
    expect(await used()).toBe(100);
    await r2.settle(settled(70));
    expect(await used()).toBe(70);
  });

  it('429 token_limit_exceeded with retry-after when the reservation does not fit now', async () => {
    await hook.reserve(call());
    await hook.reserve(call());
    const headers: Record<string, string> = {};
    const response = { headersSent: false, setHeader: (k: string, v: string) => (headers[k] = v) };
    const err = await RequestContextStore.run(
      { requestId: 'req-1', startedAt: 0, response: response as never },
      () => hook.reserve(call()) as Promise<unknown>,
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RateLimitExceededException);
    const e = err as RateLimitExceededException;
    expect(e.getStatus()).toBe(HttpStatus.TOO_MANY_REQUESTS);
    expect(e.body).toMatchObject({ error: 'token_limit_exceeded', request_id: 'req-1', limit: 'minute' });
    expect(Number(e.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(Number(e.headers['retry-after'])).toBeLessThanOrEqual(60);
    expect(headers['retry-after']).toBe(e.headers['retry-after']);
    expect(await used()).toBe(200);
    expect(rejections).toEqual([['tokens', 'minute']]);
  });

  it('413 when one call needs more than a whole window, without counting', async () => {
    await expect(hook.reserve(call({ promptTokens: 200, maxOutputTokens: 51 }))).rejects.toBeInstanceOf(
      TokenReservationTooLargeException,
    );
    expect(await used()).toBe(0);
    // exactly the window fits
    expect(await hook.reserve(call({ promptTokens: 200, maxOutputTokens: 50 }))).toBeDefined();
    expect(await used()).toBe(250);
  });

  it('no user, a moderation call, or no token window: nothing reserved', async () => {
    expect(await hook.reserve(call({ user: undefined }))).toBeUndefined();
    expect(await hook.reserve(call({ endpoint: 'moderations' }))).toBeUndefined();
    setup({ tokens: [] });
    expect(await hook.reserve(call())).toBeUndefined();
    setup({
      tokens: TOKENS,
      tiers: (u) => (u === 'big' ? { tokens: [{ name: 'minute', limit: 10_000, ttl: 60_000 }] } : undefined),
    });
    await hook.reserve(call({ user: 'big', promptTokens: 5_000 }));
    expect(
      (await limits.reserveTokens('big', 0, [{ name: 'minute', limit: 10_000, ttl: 60_000 }])).windows[0]
        .used,
    ).toBe(5_060);
  });
});
