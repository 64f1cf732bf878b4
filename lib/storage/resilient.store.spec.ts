import { Logger } from '@nestjs/common';
import { afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from 'vitest';
import { MemoryStore } from './memory.store.js';
import type { OpenAIStore, StorageFailurePolicy, WindowLimit } from './openai-store.interface.js';
import { ResilientStore, StoreDegradedError } from './resilient.store.js';

/** A primary store that can be switched off, like a Redis client that lost its server. */
class SwitchableStore implements OpenAIStore {
  readonly kind = 'redis';
  readonly inner = new MemoryStore();
  up = true;
  /** What the client reports; a reconnecting client is not ready. */
  ready = true;
  calls = 0;
  private guard<T>(fn: () => Promise<T>): Promise<T> {
    this.calls++;
    return this.up ? fn() : Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:6379'));
  }
  down(): void {
    this.up = false;
    this.ready = false;
  }
  back(): void {
    this.up = true;
    this.ready = true;
  }
  consume(...a: Parameters<OpenAIStore['consume']>) {
    return this.guard(() => this.inner.consume(...a));
  }
  adjust(...a: Parameters<OpenAIStore['adjust']>) {
    return this.guard(() => this.inner.adjust(...a));
  }
  incrementFields(...a: Parameters<OpenAIStore['incrementFields']>) {
    return this.guard(() => this.inner.incrementFields(...a));
  }
  getFields(...a: Parameters<OpenAIStore['getFields']>) {
    return this.guard(() => this.inner.getFields(...a));
  }
  get(...a: Parameters<OpenAIStore['get']>) {
    return this.guard(() => this.inner.get(...a));
  }
  set(...a: Parameters<OpenAIStore['set']>) {
    return this.guard(() => this.inner.set(...a));
  }
  setIfAbsent(...a: Parameters<OpenAIStore['setIfAbsent']>) {
    return this.guard(() => this.inner.setIfAbsent(...a));
  }
  ping() {
    return this.guard(async () => undefined);
  }
  async close() {
    await this.inner.close();
  }
  acquireSlot(...a: Parameters<OpenAIStore['acquireSlot']>) {
    return this.guard(() => this.inner.acquireSlot(...a));
  }
  releaseSlot(...a: Parameters<OpenAIStore['releaseSlot']>) {
    return this.guard(() => this.inner.releaseSlot(...a));
  }
  breakerAdmit(...a: Parameters<OpenAIStore['breakerAdmit']>) {
    return this.guard(() => this.inner.breakerAdmit(...a));
  }
  breakerReport(...a: Parameters<OpenAIStore['breakerReport']>) {
    return this.guard(() => this.inner.breakerReport(...a));
  }
}

const minute = (limit: number): WindowLimit => ({ name: 'minute', limit, windowMs: 60_000 });

describe('ResilientStore', () => {
  let primary: SwitchableStore;
  let errors: MockInstance;
  let logs: MockInstance;
  const stores: ResilientStore[] = [];
  const make = (policy: StorageFailurePolicy, instances?: number) => {
    const s = new ResilientStore(primary, policy, instances);
    stores.push(s);
    return s;
  };
  beforeEach(() => {
    primary = new SwitchableStore();
    errors = vi.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    logs = vi.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
  });
  afterEach(async () => {
    vi.restoreAllMocks();
    while (stores.length) await stores.pop()!.close();
  });

  it('passes through to the primary while it works', async () => {
    const s = make('fail-closed');
    expect((await s.consume('k', [minute(2)], 1)).degraded).toBeUndefined();
    expect((await s.consume('k', [minute(2)], 1)).allowed).toBe(true);
    expect((await s.consume('k', [minute(2)], 1)).allowed).toBe(false);
    expect(s.health()).toEqual({ kind: 'redis', up: true, policy: 'fail-closed', outages: 0 });
    expect(errors).not.toHaveBeenCalled();
  });

  it('fail-closed: refuses while down, logs once per transition, recovers without restart', async () => {
    const s = make('fail-closed');
    const transitions: boolean[] = [];
    s.onTransition = (d) => transitions.push(d);
    await s.consume('k', [minute(5)], 1);
    primary.down();
    for (let i = 0; i < 5; i++)
      await expect(s.consume('k', [minute(5)], 1)).rejects.toBeInstanceOf(StoreDegradedError);
    await expect(s.incrementFields('f', { a: 1 }, 1_000)).rejects.toBeInstanceOf(StoreDegradedError);
    await expect(s.getFields('f')).rejects.toBeInstanceOf(StoreDegradedError);
    await expect(s.ping()).rejects.toThrow(/ECONNREFUSED/);
    expect(errors).toHaveBeenCalledTimes(1);
    expect(String(errors.mock.calls[0][0])).toMatch(/redis store unavailable, policy "fail-closed"/);
    expect(s.health()).toMatchObject({ up: false, outages: 1 });
    // while the client is not ready, the primary is not hammered: one attempt marked it down, no more
    expect(primary.calls).toBe(2 + 1); // first consume, the failing one, and ping (which always tries)

    primary.back();
    const r = await s.consume('k', [minute(5)], 1);
    expect(r).toMatchObject({ allowed: true });
    expect(r.degraded).toBeUndefined();
    expect(r.windows[0].used).toBe(2); // the count kept in the primary
    expect(logs.mock.calls.filter((c) => /available again/.test(String(c[0])))).toHaveLength(1);
    await s.consume('k', [minute(5)], 1);
    expect(logs.mock.calls.filter((c) => /available again/.test(String(c[0])))).toHaveLength(1);
    expect(transitions).toEqual([true, false]);

    primary.down();
    await expect(s.consume('k', [minute(5)], 1)).rejects.toBeInstanceOf(StoreDegradedError);
    expect(errors).toHaveBeenCalledTimes(2);
    expect(s.health()).toMatchObject({ up: false, outages: 2 });
  });

  it('fail-open: admits without counting and without touching any store', async () => {
    const s = make('fail-open');
    primary.down();
    const results = await Promise.all(Array.from({ length: 20 }, () => s.consume('k', [minute(2)], 1)));
    expect(results.every((r) => r.allowed && r.degraded)).toBe(true);
    expect(results[0].windows[0]).toMatchObject({
      name: 'minute',
      limit: 2,
      used: 0,
      remaining: 2,
      start: -1,
    });
    await expect(s.adjust('k', [{ name: 'minute', start: -1 }], 5)).resolves.toBeUndefined();
    await expect(s.incrementFields('f', { a: 1 }, 1_000)).resolves.toBeUndefined();
    expect(await s.getFields('f')).toEqual({});
    expect(await s.get('x')).toBeUndefined();
    expect(await s.setIfAbsent('x', 'v', 1_000)).toBe(true);
    expect(errors).toHaveBeenCalledTimes(1);
  });

  it('memory: counts per instance with limits divided by instances (rounded up, at least 1)', async () => {
    const s = make('memory', 3);
    primary.down();
    const results = await Promise.all(Array.from({ length: 10 }, () => s.consume('k', [minute(10)], 1)));
    expect(results.filter((r) => r.allowed)).toHaveLength(4); // ceil(10 / 3)
    expect(results.every((r) => r.degraded)).toBe(true);
    const tiny = await Promise.all(Array.from({ length: 3 }, () => s.consume('t', [minute(1)], 1)));
    expect(tiny.filter((r) => r.allowed)).toHaveLength(1);
    // the fallback keeps other state too, and settles its own windows
    await s.incrementFields('f', { a: 2 }, 1_000);
    expect(await s.getFields('f')).toEqual({ a: 2 });
    const held = await s.consume('tok', [minute(100)], 30);
    await s.adjust(
      'tok',
      held.windows.map((w) => ({ name: w.name, start: w.start })),
      -20,
    );
    expect((await s.consume('tok', [minute(100)], 0)).windows[0].used).toBe(10);
  });

  it('ping reports the primary and drives the transitions', async () => {
    const s = make('memory');
    await s.ping();
    primary.down();
    await expect(s.ping()).rejects.toThrow(/ECONNREFUSED/);
    await expect(s.ping()).rejects.toThrow(/ECONNREFUSED/);
    expect(s.health().up).toBe(false);
    expect(errors).toHaveBeenCalledTimes(1);
    primary.back();
    await s.ping();
    expect(s.health()).toMatchObject({ up: true, outages: 1 });
  });
});
