import { afterEach, describe, expect, it } from 'vitest';
import { MemoryStore } from '../storage/memory.store.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import { StoreDegradedError } from '../storage/resilient.store.js';
import { StorageUnavailableException } from './rate-limit.exceptions.js';
import { OpenAIThrottlerStorage } from './openai-throttler.storage.js';

describe('OpenAIThrottlerStorage', () => {
  const store = new MemoryStore();
  afterEach(async () => {
    await store.close();
  });

  it('answers @nestjs/throttler with hits, expiry and blocking', async () => {
    const s = new OpenAIThrottlerStorage(store);
    const r1 = await s.increment('k1', 60_000, 2, 60_000, 'default');
    expect(r1).toEqual({ totalHits: 1, timeToExpire: 60, isBlocked: false, timeToBlockExpire: 0 });
    expect((await s.increment('k1', 60_000, 2, 60_000, 'default')).totalHits).toBe(2);
    const r3 = await s.increment('k1', 60_000, 2, 60_000, 'default');
    expect(r3.isBlocked).toBe(true);
    expect(r3.totalHits).toBe(3);
    expect(r3.timeToBlockExpire).toBeGreaterThanOrEqual(1);
    expect(r3.timeToBlockExpire).toBeLessThanOrEqual(60);
    // a refused hit is not stored: still blocked with the same count
    expect((await s.increment('k1', 60_000, 2, 60_000, 'default')).totalHits).toBe(3);
    // another throttler name or key has its own counter
    expect((await s.increment('k1', 60_000, 2, 60_000, 'long')).totalHits).toBe(1);
    expect((await s.increment('k2', 60_000, 2, 60_000, 'default')).totalHits).toBe(1);
  });
});

describe('OpenAIThrottlerStorage: sliding window and blockDuration (controlled clock)', () => {
  let now = 1_000_000;
  const store = new MemoryStore({ now: () => now });
  afterEach(async () => {
    await store.close();
  });

  it('blocks for blockDuration from the first refused hit, beyond the window, as @nestjs/throttler does', async () => {
    const s = new OpenAIThrottlerStorage(store);
    // ttl 1 s, limit 2, blockDuration 5 s
    const hit = () => s.increment('blk', 1_000, 2, 5_000, 'default');
    expect(await hit()).toMatchObject({ totalHits: 1, isBlocked: false, timeToBlockExpire: 0 });
    now += 10;
    expect(await hit()).toMatchObject({ totalHits: 2, isBlocked: false });
    now += 10;
    expect(await hit()).toEqual({ totalHits: 3, timeToExpire: 5, isBlocked: true, timeToBlockExpire: 5 });
    // the window alone would admit again at +1 s; the block holds until +5.02 s
    now += 2_000;
    expect(await hit()).toMatchObject({ isBlocked: true, timeToBlockExpire: 3 });
    now += 2_999;
    expect((await hit()).isBlocked).toBe(true);
    now += 1;
    expect(await hit()).toMatchObject({ totalHits: 1, isBlocked: false, timeToBlockExpire: 0 });
  });

  it('without blockDuration a key is free again as soon as its oldest hit leaves the window', async () => {
    const s = new OpenAIThrottlerStorage(store);
    now = 2_000_000;
    const hit = () => s.increment('noblk', 1_000, 2, 0, 'default');
    await hit();
    now += 500;
    await hit();
    now += 100;
    // 0.9, 1.05, 1.1 s style: the third hit inside one second is refused whatever the clock's second
    expect(await hit()).toMatchObject({ isBlocked: true, timeToBlockExpire: 1 });
    now += 400;
    // the first hit is freed: one more fits, not two
    expect(await hit()).toMatchObject({ totalHits: 2, isBlocked: false });
    expect((await hit()).isBlocked).toBe(true);
  });
});

describe('OpenAIThrottlerStorage with the store down under fail-closed', () => {
  it('answers 503 storage_unavailable (as OpenAIThrottlerGuard does), not a 500', async () => {
    const down = { consume: () => Promise.reject(new StoreDegradedError()) } as unknown as OpenAIStore;
    const err = await new OpenAIThrottlerStorage(down)
      .increment('k', 1_000, 1, 1_000, 'default')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageUnavailableException);
    expect((err as StorageUnavailableException).getStatus()).toBe(503);
    const bug = { consume: () => Promise.reject(new TypeError('boom')) } as unknown as OpenAIStore;
    await expect(
      new OpenAIThrottlerStorage(bug).increment('k', 1_000, 1, 1_000, 'default'),
    ).rejects.toBeInstanceOf(TypeError);
  });
});
