import { HttpStatus } from '@nestjs/common';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import type { LimitsOptions } from '../options/openai-module-options.interface.js';
import { MemoryStore } from '../storage/memory.store.js';
import type { OpenAIStore, WindowState } from '../storage/openai-store.interface.js';
import { StoreDegradedError } from '../storage/resilient.store.js';
import { StorageUnavailableException } from './rate-limit.exceptions.js';
import { RateLimitService, tightestWindow } from './rate-limit.service.js';

const state = (name: string, remaining: number, resetMs: number): WindowState => ({
  name,
  limit: 10,
  used: 10 - remaining,
  remaining,
  start: 0,
  resetMs,
});
const service = (store: OpenAIStore, limits: LimitsOptions) =>
  new RateLimitService(store, resolveOpenAIOptions({ environment: 'test', apiKey: 'sk-test', limits }));

describe('tightestWindow', () => {
  it('is the window with the least room, the longer wait on a tie', () => {
    expect(tightestWindow([])).toBeUndefined();
    expect(tightestWindow([state('a', 5, 1_000), state('b', 2, 60_000), state('c', 3, 10)])?.name).toBe('b');
    expect(tightestWindow([state('short', 2, 1_000), state('long', 2, 60_000)])?.name).toBe('long');
    expect(tightestWindow([state('long', 2, 60_000), state('short', 2, 1_000)])?.name).toBe('long');
  });
});

describe('RateLimitService', () => {
  const stores: MemoryStore[] = [];
  const memory = () => {
    const s = new MemoryStore();
    stores.push(s);
    return s;
  };
  afterEach(async () => {
    while (stores.length) await stores.pop()!.close();
  });

  it('limitsFor: the tier of the user (sync or async), else the defaults; no tier lookup without a user', async () => {
    const looked: string[] = [];
    const s = service(memory(), {
      requests: [{ name: 'minute', limit: 5, ttl: 60_000 }],
      tokens: [{ name: 'minute', limit: 1_000, ttl: 60_000 }],
      tiers: async (user) => {
        looked.push(user);
        if (user === 'paid') return { requests: [{ name: 'minute', limit: 50, ttl: 60_000 }] };
        if (user === 'tokens-only') return { tokens: [] };
        return undefined;
      },
    });
    expect(await s.limitsFor('paid')).toEqual({
      requests: [{ name: 'minute', limit: 50, ttl: 60_000 }],
      tokens: [{ name: 'minute', limit: 1_000, ttl: 60_000 }],
    });
    expect(await s.limitsFor('tokens-only')).toEqual({
      requests: [{ name: 'minute', limit: 5, ttl: 60_000 }],
      tokens: [],
    });
    expect((await s.limitsFor('free')).requests[0].limit).toBe(5);
    expect((await s.limitsFor(undefined)).requests[0].limit).toBe(5);
    expect(looked).toEqual(['paid', 'tokens-only', 'free']);
  });

  it('requests and tokens are counted on separate keys per tracker', async () => {
    const store = memory();
    const s = service(store, {});
    const w = [{ name: 'minute', limit: 3, ttl: 60_000 }];
    for (let i = 0; i < 3; i++) expect((await s.hitRequest('user:alice', w)).allowed).toBe(true);
    expect((await s.hitRequest('user:alice', w)).allowed).toBe(false);
    expect((await s.hitRequest('user:bob', w)).allowed).toBe(true);
    expect((await s.hitRequest('ip:127.0.0.1', w)).allowed).toBe(true);
    expect((await s.reserveTokens('alice', 3, w)).allowed).toBe(true);
    // a tracker cannot reach into another one's key through separators
    expect((await s.hitRequest('user:alice:minute', w)).allowed).toBe(true);
    expect(
      (await store.consume('{u:alice}:rl:req', [{ name: 'minute', limit: 3, windowMs: 60_000 }], 0))
        .windows[0].used,
    ).toBe(3);
  });

  it('adjustTokens settles in the windows of the reservation', async () => {
    const s = service(memory(), {});
    const w = [
      { name: 'minute', limit: 100, ttl: 60_000 },
      { name: 'day', limit: 1_000, ttl: 86_400_000 },
    ];
    const held = await s.reserveTokens('u', 60, w);
    await s.adjustTokens('u', held, -45);
    expect((await s.reserveTokens('u', 0, w)).windows.map((x) => x.used)).toEqual([15, 15]);
    await s.adjustTokens('u', held, 0);
    expect((await s.reserveTokens('u', 0, w)).windows.map((x) => x.used)).toEqual([15, 15]);
  });

  it('no windows: allowed without touching the store', async () => {
    const store = {
      consume: () => Promise.reject(new Error('must not be called')),
    } as unknown as OpenAIStore;
    expect(await service(store, {}).hitRequest('user:x', [])).toEqual({ allowed: true, windows: [] });
  });

  it('a store down under fail-closed becomes a 503; other errors pass through', async () => {
    const down = {
      consume: () => Promise.reject(new StoreDegradedError(new Error('ECONNREFUSED'))),
    } as unknown as OpenAIStore;
    const err = await service(down, {})
      .hitRequest('user:x', [{ name: 'm', limit: 1, ttl: 1_000 }])
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageUnavailableException);
    expect((err as StorageUnavailableException).getStatus()).toBe(HttpStatus.SERVICE_UNAVAILABLE);
    expect((err as StorageUnavailableException).body.error).toBe('storage_unavailable');
    const bug = { consume: () => Promise.reject(new TypeError('boom')) } as unknown as OpenAIStore;
    await expect(
      service(bug, {}).reserveTokens('x', 1, [{ name: 'm', limit: 1, ttl: 1_000 }]),
    ).rejects.toBeInstanceOf(TypeError);
  });
});
