import { afterEach, describe, expect, it, vi } from 'vitest';
import { MemoryStore } from './memory.store.js';
import type { WindowLimit } from './openai-store.interface.js';

const minute = (limit: number): WindowLimit => ({ name: 'minute', limit, windowMs: 60_000 });

describe('MemoryStore', () => {
  const stores: MemoryStore[] = [];
  const make = (o?: ConstructorParameters<typeof MemoryStore>[0]) => {
    const s = new MemoryStore(o);
    stores.push(s);
    return s;
  };
  afterEach(async () => {
    vi.useRealTimers();
    while (stores.length) await stores.pop()!.close();
  });

  it('stays within maxKeys whatever the number of users (LRU eviction)', async () => {
    const s = make({ maxKeys: 50_000 });
    let max = 0;
    for (let i = 0; i < 100_000; i++) {
      await s.consume(`user-${i}`, [minute(5)], 1);
      // the first user stays hot: LRU keeps it, FIFO would evict it
      if (i % 10_000 === 0) await s.consume('user-0', [minute(100)], 1);
      if (s.size > max) max = s.size;
    }
    expect(max).toBeLessThanOrEqual(50_000);
    expect(s.size).toBe(50_000);
    // user-0 was used recently: kept with its count (1 + 10 touches)
    expect((await s.consume('user-0', [minute(100)], 0)).windows[0].used).toBe(11);
    // user-1 was least recently used: evicted, its counter restarted
    expect((await s.consume('user-1', [minute(100)], 0)).windows[0].used).toBe(0);
    // the newest user is still there
    expect((await s.consume('user-99999', [minute(100)], 0)).windows[0].used).toBe(1);
  });

  it('maxLogEntries bounds the sliding-log entries over all keys (least recently used keys evicted)', async () => {
    let now = 1_000_000;
    const s = make({ maxLogEntries: 5_000, now: () => now });
    const second = { name: 'second', limit: 1_000, windowMs: 1_000 };
    let max = 0;
    // 100 keys, each hit at 200 distinct milliseconds: 20,000 entries asked for
    for (let k = 0; k < 100; k++)
      for (let i = 0; i < 200; i++) {
        now += 1;
        expect((await s.consume(`k${k}`, [second], 1)).allowed).toBe(true);
        max = Math.max(max, s.entries);
      }
    expect(max).toBeLessThanOrEqual(5_000);
    expect(s.entries).toBeGreaterThan(4_000);
    expect(s.size).toBeLessThanOrEqual(26);
    // the newest key is whole; the oldest was evicted (its count restarted)
    expect((await s.consume('k99', [second], 0)).windows[0].used).toBe(200);
    expect((await s.consume('k0', [second], 0)).windows[0].used).toBe(0);
  });

  it('sweep() deletes expired keys and keeps live ones', async () => {
    const s = make();
    for (let i = 0; i < 100; i++) await s.consume(`short-${i}`, [{ name: 'w', limit: 5, windowMs: 50 }], 1);
    await s.set('long-value', 'v', 60_000);
    await s.incrementFields('long-fields', { a: 1 }, 60_000);
    expect(s.size).toBe(102);
    await new Promise((r) => setTimeout(r, 100));
    s.sweep();
    expect(s.size).toBe(2);
    expect(await s.get('long-value')).toBe('v');
    // and at a given instant, deterministically
    s.sweep(Date.now() + 60_001);
    expect(s.size).toBe(0);
  });

  it('one sweep timer for the store, not one per hit, cleared on close', async () => {
    const setIntervalSpy = vi.spyOn(globalThis, 'setInterval');
    const setTimeoutSpy = vi.spyOn(globalThis, 'setTimeout');
    const s = make({ sweepIntervalMs: 10 });
    for (let i = 0; i < 1_000; i++)
      await s.consume(`u${i}`, [minute(5), { name: 'day', limit: 50, windowMs: 86_400_000 }], 1);
    await s.set('k', 'v', 1_000);
    expect(setIntervalSpy).toHaveBeenCalledTimes(1);
    expect(setTimeoutSpy).not.toHaveBeenCalled();
    const clearSpy = vi.spyOn(globalThis, 'clearInterval');
    await s.close();
    expect(clearSpy).toHaveBeenCalledTimes(1);
    vi.restoreAllMocks();
  });

  it('the periodic sweep removes expired keys by itself', async () => {
    const s = make({ sweepIntervalMs: 20 });
    await s.consume('a', [{ name: 'w', limit: 1, windowMs: 10 }], 1);
    await vi.waitFor(() => expect(s.size).toBe(0), { timeout: 2_000, interval: 10 });
  });

  it('consume is exact with concurrent callers, and a refused call counts against no window', async () => {
    const s = make();
    const windows = [minute(50), { name: 'day', limit: 1_000, windowMs: 86_400_000 }];
    const results = await Promise.all(Array.from({ length: 500 }, () => s.consume('u', windows, 1)));
    expect(results.filter((r) => r.allowed)).toHaveLength(50);
    const refused = results.find((r) => !r.allowed)!;
    expect(refused.blockedBy).toMatchObject({ name: 'minute', limit: 50, used: 50, remaining: 0 });
    const peek = await s.consume('u', windows, 0);
    expect(peek.windows.map((w) => w.used)).toEqual([50, 50]);
  });

  it('blocks on the first window without room and adds nothing anywhere', async () => {
    const s = make();
    const windows = [
      { name: 'big', limit: 100, windowMs: 60_000 },
      { name: 'small', limit: 10, windowMs: 60_000 },
    ];
    expect((await s.consume('t', windows, 8)).allowed).toBe(true);
    const r = await s.consume('t', windows, 3);
    expect(r.allowed).toBe(false);
    expect(r.blockedBy?.name).toBe('small');
    expect((await s.consume('t', windows, 0)).windows.map((w) => w.used)).toEqual([8, 8]);
    expect((await s.consume('t', windows, 2)).allowed).toBe(true);
  });

  it('reports remaining and resetMs; a window slides: each unit is freed windowMs after it was counted', async () => {
    // Was: a fixed window that restarted at zero windowMs after its first hit. Now the window slides.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(1_000_000);
    const s = make();
    const r1 = await s.consume('u', [minute(3)], 1);
    expect(r1.windows[0]).toMatchObject({ used: 1, remaining: 2, start: 1_000_000, resetMs: 60_000 });
    vi.setSystemTime(1_030_000);
    const r2 = await s.consume('u', [minute(3)], 2);
    // resetMs: until the oldest unit is freed
    expect(r2.windows[0]).toMatchObject({ used: 3, remaining: 0, start: 1_030_000, resetMs: 30_000 });
    const refused = await s.consume('u', [minute(3)], 1);
    expect(refused).toMatchObject({ allowed: false, blockedBy: { used: 3, remaining: 0, resetMs: 30_000 } });
    // 2 units need both entries freed: at 1_090_000
    expect((await s.consume('u', [minute(3)], 3)).blockedBy?.resetMs).toBe(60_000);
    vi.setSystemTime(1_060_000);
    const r3 = await s.consume('u', [minute(3)], 1);
    expect(r3.allowed).toBe(true);
    // the unit of 1_000_000 was freed, the two of 1_030_000 are still counted
    expect(r3.windows[0]).toMatchObject({ used: 3, start: 1_060_000, resetMs: 30_000 });
    expect((await s.consume('u', [minute(3)], 1)).allowed).toBe(false);
    vi.setSystemTime(1_090_000);
    expect((await s.consume('u', [minute(3)], 0)).windows[0]).toMatchObject({ used: 1, remaining: 2 });
  });

  it('a fixed window (startAt) resets when the period changes', async () => {
    const s = make();
    const day1 = Date.now() - 1_000;
    await s.consume('d', [{ name: 'day', limit: 10, windowMs: 86_400_000, startAt: day1 }], 4);
    expect(
      (await s.consume('d', [{ name: 'day', limit: 10, windowMs: 86_400_000, startAt: day1 }], 0)).windows[0]
        .used,
    ).toBe(4);
    const day2 = day1 + 500;
    const r = await s.consume('d', [{ name: 'day', limit: 10, windowMs: 86_400_000, startAt: day2 }], 1);
    expect(r.windows[0]).toMatchObject({ used: 1, start: day2 });
  });

  it('adjust corrects the referenced window, never below 0, and ignores a window that rolled over', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(5_000_000);
    const s = make();
    const first = await s.consume('tok', [minute(1_000)], 300);
    const ref = first.windows.map((w) => ({ name: w.name, start: w.start }));
    await s.adjust('tok', ref, -120);
    expect((await s.consume('tok', [minute(1_000)], 0)).windows[0].used).toBe(180);
    await s.adjust('tok', ref, -10_000);
    expect((await s.consume('tok', [minute(1_000)], 0)).windows[0].used).toBe(0);
    await s.adjust('tok', ref, 50);
    expect((await s.consume('tok', [minute(1_000)], 0)).windows[0].used).toBe(50);

    // the window rolls over; a late settlement of the old reservation must not touch the new one
    vi.setSystemTime(5_060_000);
    const second = await s.consume('tok', [minute(1_000)], 200);
    expect(second.windows[0].start).toBe(5_060_000);
    await s.adjust('tok', ref, -200);
    await s.adjust('tok', ref, +500);
    expect((await s.consume('tok', [minute(1_000)], 0)).windows[0].used).toBe(200);
    // and a reference to an absent key creates nothing
    await s.adjust('absent', ref, 5);
    expect((await s.consume('absent', [minute(1_000)], 0)).windows[0].used).toBe(0);
  });

  it('incrementFields keeps the TTL of the first write; getFields copies', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(1_000);
    const s = make();
    await s.incrementFields('usage', { requests: 1, cost: 0.25 }, 1_000);
    vi.setSystemTime(1_900);
    await s.incrementFields('usage', { requests: 1, cost: 0.5, tokens: 7 }, 1_000);
    const f = await s.getFields('usage');
    expect(f).toEqual({ requests: 2, cost: 0.75, tokens: 7 });
    f.requests = 99;
    expect((await s.getFields('usage')).requests).toBe(2);
    vi.setSystemTime(2_000);
    expect(await s.getFields('usage')).toEqual({});
  });

  it('get/set/setIfAbsent with TTL', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(10_000);
    const s = make();
    expect(await s.get('k')).toBeUndefined();
    expect(await s.setIfAbsent('k', 'a', 100)).toBe(true);
    expect(await s.setIfAbsent('k', 'b', 100)).toBe(false);
    expect(await s.get('k')).toBe('a');
    await s.set('k', 'c', 100);
    expect(await s.get('k')).toBe('c');
    vi.setSystemTime(10_100);
    expect(await s.get('k')).toBeUndefined();
    expect(await s.setIfAbsent('k', 'd', 100)).toBe(true);
    expect(await s.get('k')).toBe('d');
  });
});
