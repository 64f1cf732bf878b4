import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisClient, sharedRedisUrl, uniquePrefix } from '../../test/support/redis.js';
import { MemoryStore } from './memory.store.js';
import type { ConsumeResult, OpenAIStore, WindowLimit } from './openai-store.interface.js';
import { RedisStore } from './redis.store.js';
import { MAX_LOG_ENTRIES, slotMs } from './sliding-window.js';

const url = sharedRedisUrl();
/**
 * The controlled clock starts here: on a second boundary, ten minutes ahead of the real clock, because
 * Redis expires keys (PEXPIREAT) by its real clock.
 */
const T0 = Math.ceil(Date.now() / 1_000) * 1_000 + 600_000;

const refs = (r: ConsumeResult) => r.windows.map((w) => ({ name: w.name, start: w.start }));

/** A deterministic PRNG (mulberry32), so a failing sequence can be replayed. */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Harness {
  /** A store whose windows read `now()` instead of the real clock. */
  make(now: () => number): Promise<OpenAIStore>;
  /** Units held by the sliding log of `key`'s window `name` (entries), to check the bound. */
  entries(store: OpenAIStore, key: string, name: string): Promise<number>;
  close(): Promise<void>;
}

function memoryHarness(): Harness {
  const stores: MemoryStore[] = [];
  return {
    async make(now) {
      const s = new MemoryStore({ now });
      stores.push(s);
      return s;
    },
    entries: async (store) => (store as MemoryStore).entries,
    close: async () => {
      await Promise.all(stores.map((s) => s.close()));
    },
  };
}

function redisHarness(): Harness {
  const stores: RedisStore[] = [];
  let admin: Redis | undefined;
  const prefix = uniquePrefix('sliding');
  return {
    async make(now) {
      const s = new RedisStore({ url, keyPrefix: prefix, now }, Redis);
      stores.push(s);
      await s.waitReady(5_000);
      return s;
    },
    async entries(_store, key, name) {
      admin ??= redisClient(url);
      return admin.llen(`${prefix}{${key}}:${name}:sl`);
    },
    close: async () => {
      await Promise.all(stores.map((s) => s.close()));
      admin?.disconnect();
    },
  };
}

const harnesses: Array<[string, () => Harness, boolean]> = [
  ['MemoryStore', memoryHarness, true],
  ['RedisStore (one Lua script)', redisHarness, !!url],
];

for (const [label, makeHarness, enabled] of harnesses) {
  describe.skipIf(!enabled)(`sliding windows on ${label} (controlled clock)`, () => {
    let h: Harness;
    let now = T0;
    let store: OpenAIStore;
    const at = (t: number) => {
      now = T0 + t;
    };
    beforeAll(async () => {
      h = makeHarness();
      store = await h.make(() => now);
    });
    afterAll(async () => {
      await h.close();
    });

    it('never admits more than the limit across a window boundary (2 per second: 0.90 s, 1.05 s, 1.10 s)', async () => {
      const w: WindowLimit[] = [{ name: 'second', limit: 2, windowMs: 1_000 }];
      at(900);
      expect((await store.consume('edge', w, 1)).allowed).toBe(true);
      at(1_050);
      expect((await store.consume('edge', w, 1)).allowed).toBe(true);
      // a fixed window aligned on seconds would start over at 1.00 s and admit this one
      at(1_100);
      const third = await store.consume('edge', w, 1);
      expect(third.allowed).toBe(false);
      // retry-after: the hit of 0.90 s is freed at 1.90 s
      expect(third.blockedBy).toMatchObject({ name: 'second', used: 2, remaining: 0, resetMs: 800 });
      at(1_899);
      expect((await store.consume('edge', w, 1)).allowed).toBe(false);
      at(1_900);
      const fourth = await store.consume('edge', w, 1);
      expect(fourth.allowed).toBe(true);
      expect(fourth.windows[0]).toMatchObject({ used: 2, remaining: 0, resetMs: 150 });
      at(1_949);
      expect((await store.consume('edge', w, 1)).allowed).toBe(false);
      at(2_050);
      expect((await store.consume('edge', w, 0)).windows[0]).toMatchObject({ used: 1, remaining: 1 });
    });

    it('random traffic: never more than the limit in any window-length interval, nor refused with room', async () => {
      const windows: WindowLimit[] = [
        { name: 'burst', limit: 3, windowMs: 1_000 },
        { name: 'minute', limit: 40, windowMs: 60_000 },
      ];
      const tokens: WindowLimit[] = [{ name: 'tok', limit: 5_000, windowMs: 20_000 }];
      const rand = prng(42);
      const admitted: Array<{ t: number; cost: number; tokens: boolean }> = [];
      const overAdmitted: string[] = [];
      const refusedWithRoom: string[] = [];
      let t = 0;
      for (let i = 0; i < 600; i++) {
        t += Math.floor(rand() * 400);
        at(t);
        const isTokens = rand() < 0.5;
        const cost = isTokens ? 1 + Math.floor(rand() * 1_500) : 1;
        const ws = isTokens ? tokens : windows;
        const r = await store.consume(isTokens ? 'rand-tok' : 'rand-req', ws, cost);
        const prior = admitted.filter((a) => a.tokens === isTokens);
        for (const w of ws) {
          // what an ideal log holds at t, and the same log keeping each unit one slot longer
          const live = (slack: number) =>
            prior.filter((a) => a.t > t - w.windowMs - slack).reduce((n, a) => n + a.cost, 0);
          if (r.allowed && live(0) + cost > w.limit) overAdmitted.push(`${w.name} at ${t}`);
          if (!r.allowed && r.blockedBy?.name === w.name && live(slotMs(w)) + cost <= w.limit)
            refusedWithRoom.push(`${w.name} at ${t}`);
        }
        if (r.allowed) admitted.push({ t, cost, tokens: isTokens });
      }
      expect(overAdmitted).toEqual([]);
      expect(refusedWithRoom).toEqual([]);
      // any interval [s, s + W) holds at most the limit: it is enough to check those starting at an admission
      for (const isTokens of [false, true])
        for (const w of isTokens ? tokens : windows) {
          const list = admitted.filter((a) => a.tokens === isTokens);
          for (const a of list) {
            const inside = list.filter((b) => b.t >= a.t && b.t < a.t + w.windowMs);
            expect(inside.reduce((n, b) => n + b.cost, 0)).toBeLessThanOrEqual(w.limit);
          }
        }
      expect(admitted.filter((a) => !a.tokens).length).toBeGreaterThan(30);
      expect(admitted.filter((a) => a.tokens).length).toBeGreaterThan(30);
    });

    it('1,000 concurrent calls against a limit of 5: exactly 5 admitted, the refused ones count nowhere', async () => {
      at(100_000);
      const windows: WindowLimit[] = [
        { name: 'second', limit: 5, windowMs: 1_000 },
        { name: 'minute', limit: 100, windowMs: 60_000 },
      ];
      const results = await Promise.all(
        Array.from({ length: 1_000 }, () => store.consume('conc', windows, 1)),
      );
      expect(results.filter((r) => r.allowed)).toHaveLength(5);
      expect(results.filter((r) => !r.allowed).every((r) => r.blockedBy?.name === 'second')).toBe(true);
      expect((await store.consume('conc', windows, 0)).windows.map((w) => w.used)).toEqual([5, 5]);
    });

    it('tokens: weighted costs, retry-after until enough tokens are freed', async () => {
      const w: WindowLimit[] = [{ name: 'minute', limit: 1_000, windowMs: 60_000 }];
      at(200_000);
      expect((await store.consume('tok', w, 400)).allowed).toBe(true);
      at(210_000);
      const second = await store.consume('tok', w, 500);
      expect(second.windows[0]).toMatchObject({ used: 900, remaining: 100, resetMs: 50_000 });
      at(220_000);
      // 200 needs the 400 of 200 s freed (at 260 s); 600 needs the 500 of 210 s too (at 270 s)
      expect((await store.consume('tok', w, 200)).blockedBy).toMatchObject({ used: 900, resetMs: 40_000 });
      expect((await store.consume('tok', w, 600)).blockedBy).toMatchObject({ used: 900, resetMs: 50_000 });
      expect((await store.consume('tok', w, 100)).allowed).toBe(true);
      at(259_999);
      expect((await store.consume('tok', w, 1)).allowed).toBe(false);
      at(260_000);
      expect((await store.consume('tok', w, 400)).windows[0]).toMatchObject({ used: 1_000, remaining: 0 });
    });

    it('adjust settles to the real usage and gives back at once; a freed entry is left alone', async () => {
      const w: WindowLimit[] = [{ name: 'minute', limit: 1_000, windowMs: 60_000 }];
      at(300_000);
      const a = await store.consume('adj', w, 600);
      expect((await store.consume('adj', w, 500)).allowed).toBe(false);
      // settled to 150 real tokens: 450 given back now, not when the window ends
      await store.adjust('adj', refs(a), -450);
      expect((await store.consume('adj', w, 0)).windows[0].used).toBe(150);
      at(300_010);
      const b = await store.consume('adj', w, 500);
      expect(b.allowed).toBe(true);
      // b was counted in the same entry as a (within one slot): its release leaves a's 150
      await store.adjust('adj', refs(b), -500);
      expect((await store.consume('adj', w, 0)).windows[0].used).toBe(150);
      at(310_000);
      const c = await store.consume('adj', w, 300);
      // more than reserved: the extra is counted, and freed with c's entry
      await store.adjust('adj', refs(c), 100);
      expect((await store.consume('adj', w, 0)).windows[0].used).toBe(550);
      await store.adjust('adj', refs(c), -10_000);
      expect((await store.consume('adj', w, 0)).windows[0].used).toBe(150);
      // a's entry is freed at 360 s (its newest unit was counted at 300.01 s): a late settlement of
      // a must not touch what was counted since
      at(360_010);
      const d = await store.consume('adj', w, 200);
      expect(d.windows[0].used).toBe(200);
      await store.adjust('adj', refs(a), 500);
      await store.adjust('adj', refs(a), -500);
      expect((await store.consume('adj', w, 0)).windows[0].used).toBe(200);
      // and adjusting a key that holds nothing creates nothing
      await store.adjust('adj-absent', refs(a), 5);
      expect((await store.consume('adj-absent', w, 0)).windows[0].used).toBe(0);
    });

    it('blockMs: the key stays refused for blockMs from the first refusal, beyond the window', async () => {
      const blocking: WindowLimit[] = [{ name: 'second', limit: 2, windowMs: 1_000, blockMs: 5_000 }];
      at(400_000);
      expect((await store.consume('blk', blocking, 1)).allowed).toBe(true);
      at(400_010);
      expect((await store.consume('blk', blocking, 1)).allowed).toBe(true);
      at(400_020);
      const first = await store.consume('blk', blocking, 1);
      expect(first.blockedBy).toMatchObject({ remaining: 0, resetMs: 5_000 });
      // the window has room again at 401.00 s, the block holds until 405.02 s and is not extended
      at(401_500);
      const later = await store.consume('blk', blocking, 1);
      expect(later.blockedBy).toMatchObject({ used: 0, remaining: 0, resetMs: 3_520 });
      at(405_019);
      expect((await store.consume('blk', blocking, 1)).allowed).toBe(false);
      at(405_020);
      expect((await store.consume('blk', blocking, 1)).allowed).toBe(true);

      // without blockMs the same key is free as soon as its oldest hit is freed
      const plain: WindowLimit[] = [{ name: 'second', limit: 2, windowMs: 1_000 }];
      at(500_000);
      await store.consume('noblk', plain, 1);
      await store.consume('noblk', plain, 1);
      expect((await store.consume('noblk', plain, 1)).blockedBy?.resetMs).toBe(1_000);
      at(501_000);
      expect((await store.consume('noblk', plain, 1)).allowed).toBe(true);

      // a block shorter than what the limit requires does not shorten the wait
      const short: WindowLimit[] = [{ name: 'second', limit: 2, windowMs: 1_000, blockMs: 100 }];
      at(600_000);
      await store.consume('short', short, 1);
      await store.consume('short', short, 1);
      at(600_020);
      expect((await store.consume('short', short, 1)).blockedBy?.resetMs).toBe(980);
      at(600_500);
      expect((await store.consume('short', short, 1)).allowed).toBe(false);

      // the block is all-or-nothing too: the other window counted nothing
      const two: WindowLimit[] = [
        { name: 'second', limit: 1, windowMs: 1_000, blockMs: 10_000 },
        { name: 'hour', limit: 100, windowMs: 3_600_000 },
      ];
      at(700_000);
      expect((await store.consume('two', two, 1)).allowed).toBe(true);
      for (const dt of [1, 2_000, 9_000]) {
        at(700_000 + dt);
        expect((await store.consume('two', two, 1)).blockedBy?.name).toBe('second');
      }
      at(710_001);
      const freed = await store.consume('two', two, 1);
      expect(freed.allowed).toBe(true);
      expect(freed.windows.map((x) => x.used)).toEqual([1, 2]);
    });

    it('a window keeps at most ~1,000 log entries however often it is hit', async () => {
      const w: WindowLimit[] = [{ name: 'w', limit: 1_000_000, windowMs: 10_000 }];
      expect(slotMs(w[0])).toBe(10);
      // a store of its own, so the memory store's count holds this key alone
      const own = await h.make(() => now);
      let max = 0;
      for (let t = 0; t < 25_000; t += 3) {
        at(1_000_000 + t);
        await own.consume('hot', w, 1);
        if (t % 999 === 0) max = Math.max(max, await h.entries(own, 'hot', 'w'));
      }
      max = Math.max(max, await h.entries(own, 'hot', 'w'));
      expect(max).toBeGreaterThan(MAX_LOG_ENTRIES / 2);
      expect(max).toBeLessThanOrEqual(MAX_LOG_ENTRIES + 2);
      // and every hit of the last window is still counted
      expect((await own.consume('hot', w, 0)).windows[0].used).toBeGreaterThanOrEqual(3_333);
    });
  });
}
