import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sharedRedisUrl, uniquePrefix } from '../../test/support/redis.js';
import { MemoryStore } from '../storage/memory.store.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import { RedisStore } from '../storage/redis.store.js';

const url = sharedRedisUrl();

/**
 * The store operations of the circuit breaker and the in-flight cap, on both stores, with a clock the
 * test moves (the Redis scripts take it as an argument instead of TIME; it runs ahead of real time).
 */
const stores: Array<[string, (now: () => number) => Promise<OpenAIStore>, boolean]> = [
  ['memory', async (now) => new MemoryStore({ now }), false],
  [
    'redis',
    async (now) => {
      const s = new RedisStore({ url, keyPrefix: uniquePrefix('ha'), now }, Redis);
      await s.waitReady(5_000);
      return s;
    },
    !url,
  ],
];

describe.each(stores)('%s store: breaker and slots', (_kind, create, skip) => {
  let store: OpenAIStore;
  let t = Date.now() + 60_000;
  beforeAll(async () => {
    if (!skip) store = await create(() => t);
  });
  afterAll(async () => store?.close());

  it.skipIf(skip)(
    'opens at the threshold, admits one probe after the cool-down, a failed probe reopens, a success closes',
    async () => {
      const k = 'breaker:m1';
      expect(await store.breakerAdmit(k, 1_000)).toMatchObject({
        state: 'closed',
        allowed: true,
        probe: false,
      });
      expect(await store.breakerReport(k, false, 3, 500, false)).toMatchObject({
        state: 'closed',
        changed: false,
      });
      expect((await store.breakerAdmit(k, 1_000)).failures).toBe(1);
      // A success resets the count: failures must be consecutive.
      await store.breakerReport(k, true, 3, 500, false);
      for (let i = 0; i < 2; i++) await store.breakerReport(k, false, 3, 500, false);
      expect(await store.breakerReport(k, false, 3, 500, false)).toEqual({
        state: 'open',
        from: 'closed',
        changed: true,
      });
      expect(await store.breakerAdmit(k, 1_000)).toMatchObject({
        state: 'open',
        allowed: false,
        retryAfterMs: 500,
      });
      t += 499;
      expect((await store.breakerAdmit(k, 1_000)).allowed).toBe(false);
      t += 1;
      // Cool-down over: exactly one caller gets the probe.
      const [p1, p2] = [await store.breakerAdmit(k, 1_000), await store.breakerAdmit(k, 1_000)];
      expect(p1).toMatchObject({ state: 'half-open', allowed: true, probe: true, changed: true });
      expect(p2).toMatchObject({ state: 'half-open', allowed: false, probe: false, retryAfterMs: 1_000 });
      // A late failure of a call admitted before the breaker opened does not decide the probe.
      expect(await store.breakerReport(k, false, 3, 500, false)).toMatchObject({ state: 'half-open' });
      expect(await store.breakerReport(k, false, 3, 500, true)).toEqual({
        state: 'open',
        from: 'half-open',
        changed: true,
      });
      t += 500;
      expect((await store.breakerAdmit(k, 1_000)).probe).toBe(true);
      // A probe whose instance died: another caller gets it after the lease.
      t += 1_000;
      expect(await store.breakerAdmit(k, 1_000)).toMatchObject({
        allowed: true,
        probe: true,
        changed: false,
      });
      expect(await store.breakerReport(k, true, 3, 500, true)).toEqual({
        state: 'closed',
        from: 'half-open',
        changed: true,
      });
      expect(await store.breakerAdmit(k, 1_000)).toMatchObject({
        state: 'closed',
        allowed: true,
        failures: 0,
      });
    },
  );

  it.skipIf(skip)('slots: at most `limit` live, renewal by id, freed by release or expiry', async () => {
    const k = '{u:alice}:inflight';
    expect(await store.acquireSlot(k, 'a', 2, 1_000)).toEqual({ acquired: true, held: 1, retryAfterMs: 0 });
    t += 100;
    expect(await store.acquireSlot(k, 'b', 2, 1_000)).toMatchObject({ acquired: true, held: 2 });
    expect(await store.acquireSlot(k, 'c', 2, 1_000)).toEqual({
      acquired: false,
      held: 2,
      retryAfterMs: 900,
    });
    // An id already held is renewed, not counted twice.
    expect(await store.acquireSlot(k, 'a', 2, 1_000)).toMatchObject({ acquired: true, held: 2 });
    await store.releaseSlot(k, 'b');
    expect(await store.acquireSlot(k, 'c', 2, 1_000)).toMatchObject({ acquired: true, held: 2 });
    // Both expire (their holder never released them): room again.
    t += 1_001;
    expect(await store.acquireSlot(k, 'd', 2, 1_000)).toMatchObject({ acquired: true, held: 1 });
    await store.releaseSlot(k, 'nope');
  });
});
