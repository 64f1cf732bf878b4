import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sharedRedisUrl, uniquePrefix } from '../../test/support/redis.js';
import { MemoryStore } from './memory.store.js';
import { adjustAll, consumeAll } from './multi-key.js';
import type { ConsumeOp, OpenAIStore, WindowLimit } from './openai-store.interface.js';
import { RedisStore } from './redis.store.js';

const url = sharedRedisUrl();
const today = new Date();
/** The current UTC day (a calendar window's keys expire at its end, so it must be a live period). */
const DAY_START = Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate());
const minute = (limit: number, blockMs?: number): WindowLimit => ({
  name: 'minute',
  limit,
  windowMs: 60_000,
  ...(blockMs ? { blockMs } : {}),
});
const day = (limit: number, startAt = DAY_START): WindowLimit => ({
  name: 'day',
  limit,
  windowMs: 86_400_000,
  startAt,
});

/** A store with only the base operations: `consumeAll`/`adjustAll` fall back to one op per key. */
function baseOnly(store: OpenAIStore): OpenAIStore {
  return {
    kind: 'custom',
    consume: (k, w, c) => store.consume(k, w, c),
    adjust: (k, w, d) => store.adjust(k, w, d),
    incrementFields: (k, f, t) => store.incrementFields(k, f, t),
    getFields: (k) => store.getFields(k),
    get: (k) => store.get(k),
    set: (k, v, t) => store.set(k, v, t),
    setIfAbsent: (k, v, t) => store.setIfAbsent(k, v, t),
    ping: () => store.ping(),
    close: async () => undefined,
    acquireSlot: (k, i, l, t) => store.acquireSlot(k, i, l, t),
    releaseSlot: (k, i) => store.releaseSlot(k, i),
    breakerAdmit: (k, p) => store.breakerAdmit(k, p),
    breakerReport: (k, o, t, c, p) => store.breakerReport(k, o, t, c, p),
  };
}

const stores: Array<[string, () => Promise<OpenAIStore>, boolean]> = [
  ['memory (consumeMany)', async () => new MemoryStore(), true],
  ['a store without consumeMany (one consume per key)', async () => baseOnly(new MemoryStore()), true],
];
if (url)
  stores.push([
    'redis (one script)',
    async () => {
      const s = new RedisStore({ url, keyPrefix: uniquePrefix('multi-key') }, Redis);
      await s.waitReady(5_000);
      return s;
    },
    true,
  ]);

describe.each(stores)('consumeAll / adjustAll on %s', (_name, make) => {
  let store: OpenAIStore;
  let n = 0;
  /** Fresh keys per test: a token window (sliding) and a budget (calendar day) of one user. */
  const keys = () => {
    n++;
    return { tok: `{u:t${n}}:rl:tok`, budget: `{u:t${n}}:budget` };
  };
  const peek = async (key: string, w: WindowLimit) => (await store.consume(key, [w], 0)).windows[0].used;
  beforeAll(async () => {
    store = await make();
  });
  afterAll(async () => {
    await store.close();
  });

  it('counts every op when all have room; results in op order', async () => {
    const { tok, budget } = keys();
    const ops: ConsumeOp[] = [
      { key: tok, windows: [minute(100)], cost: 30 },
      { key: budget, windows: [day(1_000)], cost: 400 },
    ];
    const r = await consumeAll(store, ops);
    expect(r.allowed).toBe(true);
    expect(r.results.map((x) => x.windows[0].used)).toEqual([30, 400]);
    expect(r.results[1].windows[0]).toMatchObject({ name: 'day', start: DAY_START, remaining: 600 });
    expect(await peek(tok, minute(100))).toBe(30);
    expect(await peek(budget, day(1_000))).toBe(400);
  });

  it('one op without room: nothing is counted anywhere, and the refusing op is named', async () => {
    const { tok, budget } = keys();
    await store.consume(budget, [day(1_000)], 900);
    const r = await consumeAll(store, [
      { key: tok, windows: [minute(100)], cost: 30 },
      { key: budget, windows: [day(1_000)], cost: 200 },
    ]);
    expect(r.allowed).toBe(false);
    expect(r.refused).toBe(1);
    expect(r.results[1].blockedBy).toMatchObject({ name: 'day', used: 900, remaining: 100 });
    expect(r.results[0].allowed).toBe(false);
    expect(await peek(tok, minute(100))).toBe(0);
    expect(await peek(budget, day(1_000))).toBe(900);
  });

  it('a refusal starts the block of the window without room only', async () => {
    const { tok, budget } = keys();
    const blocking = minute(1, 120_000);
    await store.consume(tok, [blocking], 1);
    const r = await consumeAll(store, [
      { key: tok, windows: [blocking], cost: 1 },
      { key: budget, windows: [day(1_000)], cost: 1 },
    ]);
    expect(r).toMatchObject({ allowed: false, refused: 0 });
    expect(r.results[0].blockedBy!.resetMs).toBeGreaterThan(60_000);
    // the budget had room: not blocked, nothing counted
    expect((await store.consume(budget, [day(1_000)], 1)).allowed).toBe(true);
  });

  it('exact under 200 concurrent joint reservations: 5 admitted, the budget counted 5 times', async () => {
    const { tok, budget } = keys();
    const outcomes = await Promise.all(
      Array.from({ length: 200 }, () =>
        consumeAll(store, [
          { key: tok, windows: [minute(50)], cost: 10 },
          { key: budget, windows: [day(1_000_000)], cost: 7 },
        ]),
      ),
    );
    expect(outcomes.filter((o) => o.allowed)).toHaveLength(5);
    expect(await peek(tok, minute(50))).toBe(50);
    expect(await peek(budget, day(1_000_000))).toBe(35);
  });

  it('adjustAll settles every op in one operation and reports the counts after it', async () => {
    const { tok, budget } = keys();
    const r = await consumeAll(store, [
      { key: tok, windows: [minute(100)], cost: 30 },
      { key: budget, windows: [day(1_000)], cost: 400 },
    ]);
    const refs = r.results.map((x) => x.windows.map((w) => ({ name: w.name, start: w.start })));
    const counts = await adjustAll(store, [
      { key: tok, windows: refs[0], delta: -12 },
      { key: budget, windows: refs[1], delta: -150, read: true },
    ]);
    expect(await peek(tok, minute(100))).toBe(18);
    expect(await peek(budget, day(1_000))).toBe(250);
    // a store without adjustMany reports no counts
    expect(counts).toEqual(store.adjustMany ? [[18], [250]] : [[undefined], [undefined]]);
    // delta 0 with `read`: the counts without a change; a period that moved on: no count, nothing changed
    const read = await adjustAll(store, [
      { key: budget, windows: refs[1], delta: 0, read: true },
      { key: budget, windows: [{ name: 'day', start: DAY_START - 86_400_000 }], delta: 5, read: true },
    ]);
    expect(read).toEqual(store.adjustMany ? [[250], [undefined]] : [[undefined], [undefined]]);
    expect(await peek(budget, day(1_000))).toBe(250);
  });
});
