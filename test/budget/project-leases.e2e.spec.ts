import { Logger } from '@nestjs/common';
import { Cluster, Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { BudgetService } from '../../lib/budget/budget.service.js';
import type { BudgetAlertEvent } from '../../lib/budget/budget-alert.event.js';
import { BudgetExceededException } from '../../lib/budget/budget.exceptions.js';
import { StorageUnavailableException } from '../../lib/throttling/rate-limit.exceptions.js';
import type { UpstreamCall } from '../../lib/call/upstream-call.js';
import { OpenAIMetricsService } from '../../lib/metrics/openai-metrics.service.js';
import type { OpenAIModuleOptions } from '../../lib/options/openai-module-options.interface.js';
import { resolveOpenAIOptions } from '../../lib/options/resolve-options.js';
import { PricingService } from '../../lib/pricing/pricing.service.js';
import { RedisStore } from '../../lib/storage/redis.store.js';
import { ResilientStore } from '../../lib/storage/resilient.store.js';
import { clusterAvailable, OwnRedisCluster } from '../support/redis-cluster.js';
import { OwnRedis, redisClient, sharedRedisUrl, uniquePrefix } from '../support/redis.js';

const redisUrl = sharedRedisUrl();
const MODEL = 'lease-model-2025-01-01';
/** A call of 10 prompt tokens and at most 90 output tokens: 100 micro-USD at most (1 USD per 1M tokens). */
const MAX_MICRO = 100;

const call = (): UpstreamCall => ({
  endpoint: 'chat.completions',
  model: MODEL,
  stream: false,
  user: undefined,
  promptTokens: 10,
  maxOutputTokens: 90,
  candidates: [MODEL],
});

/** A settlement at `micro` micro-USD (costUsd given, as the pipeline does). */
const settledAt = (micro: number) => ({
  model: MODEL,
  usage: {
    prompt_tokens: 10,
    cached_tokens: 0,
    completion_tokens: micro - 10,
    reasoning_tokens: 0,
    total_tokens: micro,
    estimated: false,
  },
  attempts: 1,
  latencyMs: 1,
  costUsd: micro / 1e6,
});

interface Instance {
  budgets: BudgetService;
  redis: RedisStore;
  close(graceful?: boolean): Promise<void>;
}

async function instance(
  url: string,
  prefix: string,
  budgets: OpenAIModuleOptions['budgets'],
  instances = 2,
): Promise<Instance> {
  const options = resolveOpenAIOptions({
    apiKey: 'sk-unit',
    environment: 'test',
    storage: { type: 'redis', redis: { url, keyPrefix: prefix }, instances, onFailure: 'fail-closed' },
    pricing: { models: { [MODEL]: { input: 1, output: 1 } } },
    budgets,
  });
  const redis = new RedisStore({ url, keyPrefix: prefix }, Redis, Cluster);
  await redis.connect(5_000);
  const store = new ResilientStore(redis, 'fail-closed', instances);
  const budgets_ = new BudgetService(
    store,
    options,
    new PricingService(options),
    new OpenAIMetricsService(options),
  );
  return {
    budgets: budgets_,
    redis,
    close: async (graceful = true) => {
      if (graceful) {
        await budgets_.beforeApplicationShutdown();
        await budgets_.flush();
      }
      await store.close();
    },
  };
}

/** One call: reserve, a short await (calls overlap), settle at `real(i)` micro-USD; false when refused. */
async function oneCall(b: BudgetService, real: number, spent: { micro: number }): Promise<boolean> {
  let r;
  try {
    r = await b.reserve(call());
  } catch (err) {
    if (err instanceof BudgetExceededException) return false;
    throw err;
  }
  await new Promise((res) => setTimeout(res, Math.floor(Math.random() * 3)));
  spent.micro += real;
  await r!.settle(settledAt(real));
  return true;
}

/** The project counter (micro-USD) of `period` and the live lease records, read from Redis. */
async function raw(client: Redis | Cluster, prefix: string, period = 'day') {
  const c = Number((await client.hget(`${prefix}{budget:project}:${period}`, 'c')) ?? 0);
  const leases = await client.hgetall(`${prefix}{budget:project}:leases`);
  return { counter: c, leases: Object.keys(leases).length };
}

const today = () => new Date().toISOString().slice(0, 10);

describe.skipIf(!redisUrl)('project budget leases on one Redis', () => {
  let client: Redis;
  beforeAll(() => {
    client = redisClient(redisUrl);
  });
  afterAll(async () => {
    client?.disconnect();
  });
  beforeEach(() => {
    vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('1,000 concurrent calls on two instances never spend more than the project budget; the counter equals the spend', async () => {
    const prefix = uniquePrefix('lease-flood');
    const limitMicro = 50_000; // 500 calls at their highest cost
    const opts = {
      project: { dailyUsd: limitMicro / 1e6, monthlyUsd: 1 },
      projectLeases: { maxUsd: 0.005, perCallBelowUsd: 0.002, ttlMs: 30_000 },
    };
    const a = await instance(redisUrl, prefix, opts);
    const b = await instance(redisUrl, prefix, opts);
    const spent = { micro: 0 };
    try {
      // Every call costs its highest cost: the budget is tested at its boundary.
      const ok = await Promise.all(
        Array.from({ length: 1_000 }, (_, i) => oneCall(i % 2 ? a.budgets : b.budgets, MAX_MICRO, spent)),
      );
      const admitted = ok.filter(Boolean).length;
      expect(spent.micro).toBe(admitted * MAX_MICRO);
      expect(spent.micro).toBeLessThanOrEqual(limitMicro);
      // leases held by the other instance are the only budget a refused call could not reach
      expect(admitted).toBeGreaterThanOrEqual(limitMicro / MAX_MICRO - (2 * 5_000) / MAX_MICRO);
      // both served calls
      expect(ok.filter((x, i) => x && i % 2).length).toBeGreaterThan(0);
      expect(ok.filter((x, i) => x && !(i % 2)).length).toBeGreaterThan(0);

      // Real costs below the holds: the refunds land in the leases and on the counter.
      const spent2 = { micro: 0 };
      const p2 = uniquePrefix('lease-flood2');
      const c = await instance(redisUrl, p2, opts);
      const d = await instance(redisUrl, p2, opts);
      try {
        const ok2 = await Promise.all(
          Array.from({ length: 1_000 }, (_, i) =>
            oneCall(i % 2 ? c.budgets : d.budgets, 40 + (i % 61), spent2),
          ),
        );
        expect(spent2.micro).toBeLessThanOrEqual(limitMicro);
        // all 1,000 reserve before any settles: at most 500 holds of 100 fit at once
        expect(ok2.filter(Boolean).length).toBeGreaterThanOrEqual(400);
        // while leases live, status reports the spend, not the leases (each instance reports its own use)
        await c.budgets.flush();
        await d.budgets.flush();
        await c.budgets.status(null);
        const [day] = await d.budgets.status(null);
        expect(Math.round(day.spent_usd * 1e6)).toBe(spent2.micro);
      } finally {
        await c.close();
        await d.close();
      }
      expect(await raw(client, p2)).toEqual({ counter: spent2.micro, leases: 0 });
      console.info(
        `[project leases] 1,000 calls on two instances: ${admitted} admitted at the boundary (budget fits ${limitMicro / MAX_MICRO}); ` +
          `with real costs below the holds ${spent2.micro} micro-USD spent of ${limitMicro}`,
      );
    } finally {
      await a.close();
      await b.close();
    }
    // Shutdown returned both leases: the counter is exactly the spend, no lease left.
    expect(await raw(client, prefix)).toEqual({ counter: spent.micro, leases: 0 });
  });

  it('returns the lease on shutdown; the counter then equals the spend', async () => {
    const prefix = uniquePrefix('lease-shutdown');
    const a = await instance(redisUrl, prefix, {
      project: { dailyUsd: 1 },
      projectLeases: { maxUsd: 0.01, perCallBelowUsd: 0.001 },
    });
    const spent = { micro: 0 };
    for (let i = 0; i < 5; i++) expect(await oneCall(a.budgets, 60, spent)).toBe(true);
    await a.budgets.flush();
    const during = await raw(client, prefix);
    expect(during.leases).toBe(1);
    expect(during.counter).toBe(10_000); // the lease, counted whole
    const [day] = await a.budgets.status(null);
    expect(Math.round(day.spent_usd * 1e6)).toBe(300); // what was spent, not the lease
    await a.close();
    expect(await raw(client, prefix)).toEqual({ counter: 300, leases: 0 });
  });

  it("a killed instance's lease comes back after its TTL, all but the part it was allowed to use", async () => {
    const prefix = uniquePrefix('lease-kill');
    const opts = {
      project: { dailyUsd: 0.01 },
      projectLeases: { maxUsd: 1, perCallBelowUsd: 0, ttlMs: 300 },
    };
    const a = await instance(redisUrl, prefix, opts);
    const b = await instance(redisUrl, prefix, opts);
    try {
      const spent = { micro: 0 };
      expect(await oneCall(a.budgets, 100, spent)).toBe(true);
      await a.budgets.flush();
      // lease: 10,000 / (2 instances x 4) = 1,250 micro-USD, of which a may use a quarter (313)
      expect(await raw(client, prefix)).toEqual({ counter: 1_250, leases: 1 });
      // killed: no shutdown, no return
      await a.close(false);
      await new Promise((r) => setTimeout(r, 400));
      // the next operation on the project reclaims the expired lease: 1,250 - 313 come back
      const [day] = await b.budgets.status(null);
      expect(Math.round(day.spent_usd * 1e6)).toBe(313);
      expect(await raw(client, prefix)).toEqual({ counter: 313, leases: 0 });
      // b can hold everything else, to the last micro-USD, and not one more
      const rest = await b.budgets.reserveCost(undefined, (10_000 - 313) / 1e6, MODEL);
      expect(rest).toBeDefined();
      await expect(b.budgets.reserveCost(undefined, 1e-6, MODEL)).rejects.toBeInstanceOf(
        BudgetExceededException,
      );
      await rest!.release();
    } finally {
      await b.close();
    }
    expect(await raw(client, prefix)).toEqual({ counter: 313, leases: 0 });
  });

  it('fires project alerts on the real spend, each once, across two instances', async () => {
    const prefix = uniquePrefix('lease-alerts');
    const events: BudgetAlertEvent[] = [];
    const opts = {
      project: { dailyUsd: 0.02 },
      alertThresholds: [0.25, 0.5, 1],
      onAlert: (e: BudgetAlertEvent) => void events.push(e),
      projectLeases: { maxUsd: 0.002, perCallBelowUsd: 0.001 },
    };
    const a = await instance(redisUrl, prefix, opts);
    const b = await instance(redisUrl, prefix, opts);
    try {
      const spent = { micro: 0 };
      // 30 calls: 3,000 of 20,000 micro-USD spent, with 4,000 leased (2 x 2,000): no alert yet
      for (let i = 0; i < 30; i++) await oneCall(i % 2 ? a.budgets : b.budgets, MAX_MICRO, spent);
      await a.budgets.flush();
      await b.budgets.flush();
      expect(events).toEqual([]);
      // to the end of the budget: until both refuse (a lease the other holds comes back when it runs out)
      for (let round = 0, i = 0; round < 2; round++) {
        for (let misses = 0; misses < 4; i++)
          misses = (await oneCall(i % 2 ? a.budgets : b.budgets, MAX_MICRO, spent)) ? 0 : misses + 1;
        await a.budgets.flush();
        await b.budgets.flush();
      }
      expect(spent.micro).toBe(20_000);
      expect(events.map((e) => e.threshold).sort((x, y) => x - y)).toEqual([0.25, 0.5, 1]);
      for (const e of events) {
        expect(e).toMatchObject({ scope: 'project', period: 'day', limitUsd: 0.02 });
        expect(e.periodStart.slice(0, 10)).toBe(today());
        expect(e.spentUsd).toBeGreaterThanOrEqual(e.threshold * 0.02);
        expect(e.spentUsd).toBeLessThanOrEqual(spent.micro / 1e6);
      }
    } finally {
      await a.close();
      await b.close();
    }
    expect(await raw(client, prefix)).toEqual({ counter: 20_000, leases: 0 });
  });

  it('Redis down (fail-closed): calls go on within the cap of the lease, then get 503', async () => {
    const own = await OwnRedis.start();
    const a = await instance(own.url, uniquePrefix('lease-down'), {
      project: { dailyUsd: 0.01 },
      projectLeases: { maxUsd: 0.004, perCallBelowUsd: 0 },
    });
    try {
      const spent = { micro: 0 };
      // lease: 1,250 micro-USD (10,000 / 8), cap 313 at first: 3 calls of 100
      expect(await oneCall(a.budgets, MAX_MICRO, spent)).toBe(true);
      await a.budgets.flush();
      await own.stop();
      expect(await oneCall(a.budgets, MAX_MICRO, spent)).toBe(true);
      expect(await oneCall(a.budgets, MAX_MICRO, spent)).toBe(true);
      await expect(a.budgets.reserve(call())).rejects.toBeInstanceOf(StorageUnavailableException);
    } finally {
      await a.close().catch(() => undefined);
      await own.stop();
    }
  });

  it('needs far fewer Redis commands on the project key per call (MONITOR)', async () => {
    const count = async (enabled: boolean) => {
      const prefix = uniquePrefix(`lease-cmds-${enabled}`);
      const opts = {
        project: { dailyUsd: 10, monthlyUsd: 100 },
        projectLeases: { enabled, maxUsd: 0.05, perCallBelowUsd: 0.01 },
      };
      const a = await instance(redisUrl, prefix, opts);
      const b = await instance(redisUrl, prefix, opts);
      const monitor = await client.monitor();
      let commands = 0;
      // round trips only: not the commands a script runs inside Redis (source 'lua')
      monitor.on('monitor', (_time: string, args: string[], source: string) => {
        if (source !== 'lua' && args.some((x) => x.startsWith(`${prefix}{budget:project}`))) commands++;
      });
      try {
        const spent = { micro: 0 };
        for (let round = 0; round < 10; round++)
          await Promise.all(
            Array.from({ length: 100 }, (_, i) => oneCall(i % 2 ? a.budgets : b.budgets, 70, spent)),
          );
        await a.budgets.flush();
        await b.budgets.flush();
        await a.close();
        await b.close();
        await new Promise((r) => setTimeout(r, 100));
        expect(await raw(client, prefix)).toEqual({ counter: spent.micro, leases: 0 });
        return commands / 1_000;
      } finally {
        monitor.disconnect();
      }
    };
    const perCall = await count(false);
    const leased = await count(true);
    console.info(
      `[project leases] Redis commands on the project key per call (1,000 calls, 2 instances): ` +
        `per-call reservation ${perCall.toFixed(3)}, leases ${leased.toFixed(3)}`,
    );
    expect(perCall).toBeGreaterThanOrEqual(2); // reserve + settle (+ the alert check's read)
    expect(leased).toBeLessThan(0.1);
  });
});

describe.skipIf(!clusterAvailable())('project budget leases on a Redis Cluster', () => {
  let cluster: OwnRedisCluster;
  beforeAll(async () => {
    cluster = await OwnRedisCluster.start();
  }, 60_000);
  afterAll(async () => {
    await cluster?.stop();
  });
  beforeEach(() => {
    vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('1,000 concurrent calls on two instances never spend more than the project budget', async () => {
    const prefix = uniquePrefix('lease-cluster');
    const opts = {
      project: { dailyUsd: 0.05 },
      projectLeases: { maxUsd: 0.005, perCallBelowUsd: 0.002 },
    };
    const a = await instance(cluster.clusterUrl, prefix, opts);
    const b = await instance(cluster.clusterUrl, prefix, opts);
    const spent = { micro: 0 };
    try {
      const ok = await Promise.all(
        Array.from({ length: 1_000 }, (_, i) => oneCall(i % 2 ? a.budgets : b.budgets, MAX_MICRO, spent)),
      );
      expect(spent.micro).toBe(ok.filter(Boolean).length * MAX_MICRO);
      expect(spent.micro).toBeLessThanOrEqual(50_000);
      expect(ok.filter(Boolean).length).toBeGreaterThanOrEqual(400);
    } finally {
      await a.close();
      await b.close();
    }
    const probe = new Cluster(
      cluster.nodes.map((n) => ({ host: n.split(':')[0], port: Number(n.split(':')[1]) })),
    );
    try {
      expect(await raw(probe, prefix)).toEqual({ counter: spent.micro, leases: 0 });
    } finally {
      probe.disconnect();
    }
  });
});
