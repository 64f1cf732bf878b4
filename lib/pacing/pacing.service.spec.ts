import { Logger } from '@nestjs/common';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { OpenAIModuleOptions } from '../options/openai-module-options.interface.js';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import { MemoryStore } from '../storage/memory.store.js';
import { PacingService } from './pacing.service.js';

const MODEL = 'gpt-4o-2024-08-06';
const SYNC_MS = 5_000;

type Listener = { message(m: string): void; lost?(): void; resumed?(): void };

/** The store several instances share, in memory, with an in-process channel; operations counted. */
class SharedStore extends MemoryStore {
  readonly ops: string[] = [];
  readonly listeners = new Map<string, Set<Listener>>();
  deliver = true;

  constructor() {
    super({ now: () => Date.now() });
  }
  override get(key: string) {
    this.ops.push('get');
    return super.get(key);
  }
  override set(key: string, value: string, ttlMs: number) {
    this.ops.push('set');
    return super.set(key, value, ttlMs);
  }
  async publish(channel: string, message: string): Promise<void> {
    this.ops.push('publish');
    if (this.deliver) for (const l of this.listeners.get(channel) ?? []) l.message(message);
  }
  async subscribe(channel: string, listener: Listener): Promise<{ close(): Promise<void> }> {
    const set = this.listeners.get(channel) ?? new Set();
    this.listeners.set(channel, set);
    set.add(listener);
    return { close: async () => void set.delete(listener) };
  }
  take(): string[] {
    return this.ops.splice(0);
  }
}

/** A reply's x-ratelimit-* headers: `requests` left, reset in `resetMs`. */
const reply = (requests: number, resetMs = 60_000, tokens = 100_000) =>
  new Headers({
    'x-ratelimit-remaining-requests': String(requests),
    'x-ratelimit-remaining-tokens': String(tokens),
    'x-ratelimit-reset-requests': `${resetMs}ms`,
    'x-ratelimit-reset-tokens': '1s',
  });

describe('PacingService: the local view', () => {
  const started: PacingService[] = [];
  const instance = async (store: MemoryStore, extra: OpenAIModuleOptions = {}) => {
    const s = new PacingService(
      resolveOpenAIOptions({
        environment: 'development',
        apiKey: 'sk-test-0000000000000000',
        logging: { config: false },
        models: { default: MODEL },
        pacing: { mode: 'refuse', minRemainingRequests: 1, syncIntervalMs: SYNC_MS },
        ...extra,
      }),
      store,
    );
    await s.onModuleInit();
    started.push(s);
    return s;
  };
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date', 'setInterval', 'clearInterval'] });
    vi.setSystemTime(1_800_000_000_000);
    vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
  });
  afterEach(async () => {
    for (const s of started.splice(0)) await s.onModuleDestroy();
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  it('replies with room left: no store operation, and waitFor answers at once (a number, no promise)', async () => {
    const store = new SharedStore();
    const a = await instance(store);
    store.take();
    for (let i = 0; i < 100; i++) {
      a.observe(MODEL, reply(500 - i));
      expect(a.waitFor(MODEL, 10)).toBe(0);
    }
    expect(store.take()).toEqual([]);
  });

  it('a reply at the threshold is shared once (store and message); the other instance waits without a store read', async () => {
    const store = new SharedStore();
    const a = await instance(store);
    const b = await instance(store);
    store.take();
    a.observe(MODEL, reply(1, 30_000));
    expect(store.take()).toEqual(['set', 'publish']);
    expect(a.waitFor(MODEL, 10)).toBe(30_000);
    expect(b.waitFor(MODEL, 10)).toBe(30_000);
    // The same window again, on either instance: nothing more is shared.
    vi.advanceTimersByTime(100);
    a.observe(MODEL, reply(0, 29_900));
    b.observe(MODEL, reply(0, 29_900));
    expect(store.take()).toEqual([]);
    expect(b.waitFor(MODEL, 10)).toBe(29_900);

    // Lifted before its reset (the organization's limit raised): shared once more, so B goes again.
    a.observe(MODEL, reply(5_000, 29_000));
    expect(store.take()).toEqual(['set', 'publish']);
    expect(b.waitFor(MODEL, 10)).toBe(0);
  });

  it('the newer reply wins: a paced state from an older reply does not override a fresher view', async () => {
    const store = new SharedStore();
    const a = await instance(store);
    const b = await instance(store);
    b.observe(MODEL, reply(400));
    // A message carrying an older reply (read before B's).
    for (const l of store.listeners.get('sync:pace') ?? [])
      l.message(
        JSON.stringify({
          i: 'another',
          p: 'default',
          m: MODEL,
          remainingRequests: 0,
          resetRequestsAt: Date.now() + 30_000,
          at: Date.now() - 10,
        }),
      );
    expect(b.waitFor(MODEL, 10)).toBe(0);
    expect(a.waitFor(MODEL, 10)).toBe(30_000);
  });

  it('a missed message is healed by the periodic re-read; an instance started later reads it at boot', async () => {
    const store = new SharedStore();
    const a = await instance(store);
    const b = await instance(store);
    store.deliver = false;
    a.observe(MODEL, reply(0, 30_000));
    expect(b.waitFor(MODEL, 10)).toBe(0);
    store.take();
    await vi.advanceTimersByTimeAsync(SYNC_MS);
    expect(store.take()).toContain('get');
    expect(b.waitFor(MODEL, 10)).toBe(30_000 - SYNC_MS);

    const c = await instance(store);
    expect(c.waitFor(MODEL, 10)).toBe(30_000 - SYNC_MS);
  });

  it("another project's states are not applied", async () => {
    const store = new SharedStore();
    const a = await instance(store, { project: 'proj_a' });
    const b = await instance(store, { project: 'proj_b' });
    a.observe(MODEL, reply(0, 30_000));
    expect(a.waitFor(MODEL, 10)).toBe(30_000);
    expect(b.waitFor(MODEL, 10)).toBe(0);
  });

  it('a store without pub/sub: the states are written and re-read, never read on the call path', async () => {
    const store = new MemoryStore({ now: () => Date.now() });
    const get = vi.spyOn(store, 'get');
    const set = vi.spyOn(store, 'set');
    const a = await instance(store);
    const b = await instance(store);
    const booted = get.mock.calls.length;
    for (let i = 0; i < 50; i++) {
      b.observe(MODEL, reply(1_000 - i));
      expect(b.waitFor(MODEL, 10)).toBe(0);
    }
    expect(get).toHaveBeenCalledTimes(booted);
    expect(set).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    a.observe(MODEL, reply(0, 30_000));
    expect(set).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(SYNC_MS);
    // B's view came from a reply read before A's: A's newer one wins.
    expect(b.waitFor(MODEL, 10)).toBe(30_000 - SYNC_MS);
  });
});
