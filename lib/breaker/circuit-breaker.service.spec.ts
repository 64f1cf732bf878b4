import { Logger } from '@nestjs/common';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import { MemoryStore } from '../storage/memory.store.js';
import type { BreakerAdmission, BreakerState } from '../storage/openai-store.interface.js';
import { CircuitBreakerService, type BreakerTicket } from './circuit-breaker.service.js';

const MODEL = 'gpt-4o-2024-08-06';
const COOLDOWN_MS = 1_000;
const SYNC_MS = 5_000;
const LEASE_MS = 2_000;

type Listener = { message(m: string): void; lost?(): void; resumed?(): void };

/**
 * The store several instances share, in memory: the memory store's breaker operations, an in-process
 * channel (`deliver = false` loses the messages) and `breakerPeek`; every operation is counted.
 */
class SharedStore extends MemoryStore {
  readonly ops: string[] = [];
  readonly listeners = new Map<string, Set<Listener>>();
  deliver = true;

  constructor() {
    super({ now: () => Date.now() });
  }
  override breakerAdmit(key: string, lease: number): Promise<BreakerAdmission> {
    this.ops.push('breakerAdmit');
    return super.breakerAdmit(key, lease);
  }
  override breakerReport(key: string, ok: boolean, threshold: number, cooldown: number, probe: boolean) {
    this.ops.push(`breakerReport:${ok ? 'ok' : 'failed'}`);
    return super.breakerReport(key, ok, threshold, cooldown, probe);
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
  /** The memory store's breaker record, read without a change (as the Redis script does). */
  async breakerPeek(key: string) {
    this.ops.push('breakerPeek');
    // The memory store's private record (this double reads it as the Redis script reads the hash).
    const b = (
      this as unknown as { breakers: Map<string, { s: 0 | 1 | 2; f: number; u: number; p: number }> }
    ).breakers.get(key);
    const state = (['closed', 'open', 'half-open'] as const)[b?.s ?? 0];
    const ends = b?.s === 1 ? b.u : b?.s === 2 ? b.p : 0;
    return { state, failures: b?.f ?? 0, retryAfterMs: Math.max(0, ends - Date.now()) };
  }
  /** Operations since the last call. */
  take(): string[] {
    return this.ops.splice(0);
  }
}

const resolved = (sync = SYNC_MS, cooldownMs = COOLDOWN_MS) =>
  resolveOpenAIOptions({
    environment: 'development',
    apiKey: 'sk-test-0000000000000000',
    logging: { config: false },
    models: { default: MODEL },
    breaker: { failures: 3, cooldownMs, syncIntervalMs: sync },
  });

/** A ticket the view gave at once (no promise): fails the test otherwise. */
function now(t: BreakerTicket | Promise<BreakerTicket>): BreakerTicket {
  expect(t).not.toBeInstanceOf(Promise);
  return t as BreakerTicket;
}

/** One attempt of `model` on an instance: admitted, then reported (`ok`); the state after, or 'skipped'. */
async function attempt(s: CircuitBreakerService, ok: boolean): Promise<BreakerState | 'skipped'> {
  const ticket = await s.admit(MODEL, LEASE_MS);
  if (!ticket.allowed) return 'skipped';
  return s.report(ticket, ok);
}

describe('CircuitBreakerService: the local view', () => {
  const started: CircuitBreakerService[] = [];
  const instance = async (store: MemoryStore, sync = SYNC_MS, cooldownMs = COOLDOWN_MS) => {
    const s = new CircuitBreakerService(resolved(sync, cooldownMs), store);
    await s.onModuleInit();
    started.push(s);
    return s;
  };
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date', 'setInterval', 'clearInterval'] });
    vi.setSystemTime(1_800_000_000_000);
    vi.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
  });
  afterEach(async () => {
    for (const s of started.splice(0)) await s.onModuleDestroy();
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  it('closed: admit and a success answer from the view, no store operation and no promise', async () => {
    const store = new SharedStore();
    const a = await instance(store);
    // At boot: the configured models (chat, moderation, embedding) as the store has them.
    expect(store.take()).toEqual(['breakerPeek', 'breakerPeek', 'breakerPeek']);
    for (let i = 0; i < 100; i++) {
      const ticket = now(a.admit(MODEL, LEASE_MS));
      expect(ticket).toMatchObject({ allowed: true, probe: false, failures: 0 });
      expect(a.report(ticket, true)).toBe('closed');
    }
    expect(store.take()).toEqual([]);
  });

  it('transitions made by one instance reach the other by message; the other skips without a store read', async () => {
    const store = new SharedStore();
    const a = await instance(store);
    const b = await instance(store);
    store.take();
    expect(await attempt(a, false)).toBe('closed');
    // A's first failure is told: B reports its next success, which clears the count (consecutive failures).
    expect(store.take()).toEqual(['breakerReport:failed', 'publish']);
    expect(now(b.admit(MODEL, LEASE_MS)).failures).toBeGreaterThan(0);
    expect(await attempt(b, true)).toBe('closed');
    expect(store.take()).toEqual(['breakerReport:ok']);
    expect(await attempt(a, false)).toBe('closed');
    expect(await attempt(a, false)).toBe('closed'); // 2 consecutive: B's success reset the first
    expect(await attempt(b, false)).toBe('open'); // the third, on B
    store.take();

    // A never saw the third failure, yet skips the model from its view, with the cool-down's wait.
    const skipped = now(a.admit(MODEL, LEASE_MS));
    expect(skipped).toMatchObject({ allowed: false });
    expect(skipped.retryAfterMs).toBeGreaterThan(COOLDOWN_MS - 50);
    expect(a.health()[MODEL]).toMatchObject({ state: 'open' });
    expect(store.take()).toEqual([]);
  });

  it('the cool-down over: both instances ask the store, exactly one probes; its success closes both views', async () => {
    const store = new SharedStore();
    const a = await instance(store);
    const b = await instance(store);
    for (let i = 0; i < 3; i++) await attempt(a, false);
    expect(b.health()[MODEL]?.state).toBe('open');
    vi.advanceTimersByTime(COOLDOWN_MS - 1);
    expect(now(b.admit(MODEL, LEASE_MS)).allowed).toBe(false);
    vi.advanceTimersByTime(1);
    store.take();

    const ta = a.admit(MODEL, LEASE_MS);
    const tb = b.admit(MODEL, LEASE_MS);
    expect(ta).toBeInstanceOf(Promise);
    expect(tb).toBeInstanceOf(Promise);
    const [pa, pb] = await Promise.all([ta, tb]);
    expect([pa.probe, pb.probe]).toEqual([true, false]);
    expect(pb).toMatchObject({ allowed: false });
    expect(store.take()).toEqual(['breakerAdmit', 'breakerAdmit', 'publish']);
    expect(b.health()[MODEL]?.state).toBe('half-open');

    expect(await a.report(pa, true)).toBe('closed');
    expect(b.health()[MODEL]?.state).toBe('closed');
    store.take();
    expect(now(b.admit(MODEL, LEASE_MS))).toMatchObject({ allowed: true, failures: 0 });
    expect(store.take()).toEqual([]);
  });

  it('a missed message is healed by the periodic re-read, and at once when the subscription resumes', async () => {
    const store = new SharedStore();
    // A cool-down longer than the re-read interval: B re-reads while it runs.
    const a = await instance(store, SYNC_MS, 2 * SYNC_MS);
    const b = await instance(store, SYNC_MS, 2 * SYNC_MS);
    store.deliver = false;
    for (let i = 0; i < 3; i++) await attempt(a, false);
    // B missed the transition: its view is still closed.
    expect(now(b.admit(MODEL, LEASE_MS)).allowed).toBe(true);
    store.take();
    await vi.advanceTimersByTimeAsync(SYNC_MS);
    // A's and B's re-read of the models they know (3 each).
    expect(store.take().filter((op) => op === 'breakerPeek')).toHaveLength(6);
    expect(now(b.admit(MODEL, LEASE_MS))).toMatchObject({ allowed: false });

    // The cool-down over, A probes and closes it; B misses that too, and its view stays open.
    await vi.advanceTimersByTimeAsync(SYNC_MS);
    const probe = await a.admit(MODEL, LEASE_MS);
    expect(probe.probe).toBe(true);
    expect(await a.report(probe, true)).toBe('closed');
    expect(b.health()[MODEL]?.state).toBe('open');
    // B's subscription was lost and resumes: it re-reads at once.
    store.take();
    for (const l of store.listeners.get('sync:breaker') ?? []) l.resumed?.();
    await vi.advanceTimersByTimeAsync(0);
    expect(store.take()).toContain('breakerPeek');
    expect(b.health()[MODEL]?.state).toBe('closed');
  });

  it('messages overtaken by a later one of the same sender are dropped (a Redis Cluster may reorder them)', async () => {
    const store = new SharedStore();
    const b = await instance(store);
    const send = (m: object) => {
      for (const l of store.listeners.get('sync:breaker') ?? []) l.message(JSON.stringify(m));
    };
    send({ i: 'a', m: MODEL, s: 'open', ms: 30_000, f: 3, n: 1 });
    expect(b.health()[MODEL]?.state).toBe('open');
    send({ i: 'a', m: MODEL, s: 'closed', ms: 0, f: 0, n: 3 }); // its probe succeeded...
    send({ i: 'a', m: MODEL, s: 'half-open', ms: 2_000, f: 3, n: 2 }); // ...after it took it
    expect(b.health()[MODEL]?.state).toBe('closed');
    // A first failure counted elsewhere never closes an open view (a close clears the count).
    send({ i: 'c', m: MODEL, s: 'open', ms: 30_000, f: 3, n: 1 });
    send({ i: 'd', m: MODEL, s: 'closed', ms: 0, f: 1, n: 1 });
    expect(b.health()[MODEL]?.state).toBe('open');
  });

  it('a store without pub/sub: a call re-reads its breaker at most once per sync interval', async () => {
    const store = new MemoryStore({ now: () => Date.now() });
    const admit = vi.spyOn(store, 'breakerAdmit');
    const a = await instance(store);
    for (let i = 0; i < 50; i++) await a.report(await a.admit(MODEL, LEASE_MS), true);
    expect(admit).toHaveBeenCalledTimes(1);
    vi.advanceTimersByTime(SYNC_MS);
    for (let i = 0; i < 50; i++) await a.report(await a.admit(MODEL, LEASE_MS), true);
    expect(admit).toHaveBeenCalledTimes(2);
  });

  it('a store that fails lets calls through', async () => {
    const store = new MemoryStore({ now: () => Date.now() });
    vi.spyOn(store, 'breakerAdmit').mockRejectedValue(new Error('down'));
    vi.spyOn(store, 'breakerReport').mockRejectedValue(new Error('down'));
    const a = await instance(store);
    const ticket = await a.admit(MODEL, LEASE_MS);
    expect(ticket).toMatchObject({ allowed: true });
    expect(await a.report(ticket, false)).toBe('closed');
  });
});
