import { afterEach, describe, expect, it } from 'vitest';
import { MemoryStore } from '../storage/memory.store.js';
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
