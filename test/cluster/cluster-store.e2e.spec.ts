import { randomBytes } from 'node:crypto';
import { Cluster, Redis } from 'ioredis';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_PRICES, OpenAIConfigError, UsageService, type StorageOptions } from '../../lib/index.js';
import { ResilientStore } from '../../lib/storage/resilient.store.js';
import { clusterKeySlot } from '../../lib/storage/cluster-slot.js';
import { createStore } from '../../lib/storage/create-store.js';
import { subjectKey, trackerKey } from '../../lib/storage/openai-store.interface.js';
import { resolveOpenAIOptions } from '../../lib/options/resolve-options.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import { OwnRedisCluster, clusterAvailable } from '../support/redis-cluster.js';
import { startSampleApp, type SampleAppHandle } from '../support/sample-app.js';
import {
  chatBody,
  flood,
  jsonHeaders,
  listen,
  startThrottlingApp,
} from '../throttling/throttling-fixture.js';

const available = clusterAvailable();
const options = (storage: StorageOptions) =>
  resolveOpenAIOptions({ environment: 'test', apiKey: 'sk-test', storage });
const tag = () => randomBytes(3).toString('hex');

/** `n` sample users with random names (names that differ in one character hash to nearby slots). */
function sampleUsers(n: number) {
  const users = Array.from({ length: n }, (_, i) => ({ name: `${tag()}-c${i}`, token: `t${i}-${tag()}` }));
  return { users, env: { SAMPLE_USERS: users.map((u) => `${u.name}:${u.token}`).join(',') } };
}

describe.skipIf(!available)('Redis Cluster store (3 masters on loopback)', () => {
  let cluster: OwnRedisCluster;
  let fake: FakeOpenAIServer;
  const closers: Array<() => Promise<unknown>> = [];
  beforeAll(async () => {
    [cluster, fake] = await Promise.all([OwnRedisCluster.start({ masters: 3 }), FakeOpenAIServer.start()]);
  }, 60_000);
  afterAll(async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    await fake?.close();
    await cluster?.stop();
  });

  const openStore = async (storage: StorageOptions['redis'], extra: StorageOptions = {}) => {
    const s = await createStore(
      options({ type: 'redis', redis: storage, onFailure: 'fail-closed', ...extra }),
    );
    closers.push(() => s.close());
    return s;
  };

  it('hash slots are computed as Redis does, and one user’s keys share one slot', async () => {
    const admin = new Redis({ port: cluster.ports[0], host: '127.0.0.1' });
    try {
      const keys = [
        'plain',
        'openai:{u:alice}:rl:req:minute',
        '{}x',
        'a{b}c{d}',
        'ünïcode{ü}',
        'x{',
        `p:{u:bob%20x}:budget:day`,
      ];
      for (const k of keys)
        expect([k, clusterKeySlot(k)]).toEqual([k, Number(await admin.cluster('KEYSLOT', k))]);
      const userKeys = [
        trackerKey('user:alice', 'rl:req') + ':minute',
        subjectKey('alice', 'rl:tok') + ':minute',
        subjectKey('alice', 'budget') + ':day',
        subjectKey('alice', 'usage:2024-07-04'),
      ].map((k) => `openai:${k}`);
      const slots = await Promise.all(userKeys.map(async (k) => Number(await admin.cluster('KEYSLOT', k))));
      expect(new Set(slots).size).toBe(1);
    } finally {
      admin.disconnect();
    }
  });

  it('every operation works on keys spread over all three masters (redis+cluster:// URL)', async () => {
    const prefix = `ops-${tag()}:`;
    const s = await openStore({ url: cluster.clusterUrl, keyPrefix: prefix });
    const users = Array.from({ length: 30 }, (_, i) => `user-${i}`);
    const masters = new Set(
      await Promise.all(
        users.map((u) => cluster.masterOfSlot(clusterKeySlot(`${prefix}${subjectKey(u, 'x')}`))),
      ),
    );
    expect(masters.size).toBe(3);
    const windows = [
      { name: 'minute', limit: 3, windowMs: 60_000 },
      { name: 'day', limit: 10, windowMs: 86_400_000 },
    ];
    await Promise.all(
      users.map(async (u) => {
        const key = subjectKey(u, 'rl:req');
        const results = [];
        for (let i = 0; i < 4; i++) results.push(await s.consume(key, windows, 1));
        expect(results.map((r) => r.allowed)).toEqual([true, true, true, false]);
        const state = await s.consume(key, windows, 0);
        expect(state.windows.map((w) => w.used)).toEqual([3, 3]);
        // give back what the first two calls counted (adjust refers to what a consume counted: the
        // windows slide, so a peek's reference is no longer "the window")
        await s.adjust(key, results[0].windows, -1);
        await s.adjust(key, results[1].windows, -1);
        expect((await s.consume(key, windows, 2)).allowed).toBe(true);
        await s.incrementFields(subjectKey(u, 'usage:d'), { requests: 1, cost_usd: 0.25 }, 60_000);
        await s.incrementFields(subjectKey(u, 'usage:d'), { requests: 2, cost_usd: 0.5 }, 60_000);
        expect(await s.getFields(subjectKey(u, 'usage:d'))).toEqual({ requests: 3, cost_usd: 0.75 });
        await s.set(`cache:${u}`, `v-${u}`, 60_000);
        expect(await s.get(`cache:${u}`)).toBe(`v-${u}`);
        expect(await s.setIfAbsent(`once:${u}`, '1', 60_000)).toBe(true);
        expect(await s.setIfAbsent(`once:${u}`, '2', 60_000)).toBe(false);
      }),
    );
    expect((s as ResilientStore).health()).toMatchObject({ up: true, outages: 0 });
  });

  it('boot connects and pings every master: the first burst after boot is served in full', async () => {
    const s = (await openStore(
      { cluster: { nodes: [cluster.nodes[0]] }, keyPrefix: `burst-${tag()}:`, commandTimeoutMs: 300 },
      { connectTimeoutMs: 5_000 },
    )) as ResilientStore;
    const h = s.health().cluster!;
    expect(h).toMatchObject({ state: 'ok', mastersDown: [], healthy: true });
    expect(h.masters.map((m) => Number(m.split(':')[1])).sort((x, y) => x - y)).toEqual(
      await cluster.masterPorts(),
    );
    const windows = [{ name: 'minute', limit: 1_000, windowMs: 60_000 }];
    const results = await Promise.allSettled(
      Array.from({ length: 600 }, (_, i) => s.consume(subjectKey(`burst-${i % 60}`, 'rl:req'), windows, 1)),
    );
    expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
    expect(results.every((r) => r.status === 'fulfilled' && r.value.allowed && !r.value.degraded)).toBe(true);
    expect(s.health()).toMatchObject({ up: true, outages: 0 });
  });

  it('a given Cluster client (not closed by the store) gets the same boot check and health tracking', async () => {
    const client = new Cluster([{ host: '127.0.0.1', port: cluster.ports[1] }]);
    closers.push(async () => client.disconnect());
    const s = (await openStore({ client, keyPrefix: `given-${tag()}:` })) as ResilientStore;
    expect(s.health().cluster?.masters).toHaveLength(3);
    expect(
      (await s.consume(subjectKey('g', 'x'), [{ name: 'm', limit: 1, windowMs: 1_000 }], 1)).allowed,
    ).toBe(true);
    await s.close();
    expect(client.status).toBe('ready');
  });

  it('a plain redis:// URL pointing at a cluster node is detected: a cluster client, a warning, every slot served', async () => {
    const h = await startThrottlingApp('express', fake.baseURL, {
      limits: { requests: [{ name: 'minute', limit: 2, ttl: 60_000 }] },
      storage: {
        type: 'redis',
        redis: { url: `redis://127.0.0.1:${cluster.ports[2]}`, keyPrefix: `detect-${tag()}:` },
        onFailure: 'fail-closed',
      },
    });
    closers.push(() => h.close());
    const warnings = h.logger.lines.filter((l) => /points at a Redis Cluster node/.test(String(l.message)));
    expect(warnings).toHaveLength(1);
    expect(String(warnings[0].message)).toMatch(/redis\+cluster:\/\//);
    // eight users land on every master: with a plain client most would fail with MOVED (503 under fail-closed)
    const tokens = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi'];
    const slotsMasters = new Set(
      await Promise.all(
        tokens.map((u) => cluster.masterOfSlot(clusterKeySlot(`x${subjectKey(u, 'rl:req')}`))),
      ),
    );
    expect(slotsMasters.size).toBe(3);
    for (const u of tokens) {
      const statuses = [];
      for (let i = 0; i < 3; i++)
        statuses.push(
          (
            await request(h.server)
              .get('/ping')
              .set({ authorization: `Bearer ${u}-token` })
          ).status,
        );
      expect({ u, statuses }).toEqual({ u, statuses: [200, 200, 429] });
    }
  });

  it('a keyPrefix with braces is refused at boot, with the reason and the fix', async () => {
    let err: OpenAIConfigError | undefined;
    try {
      options({ type: 'redis', redis: { cluster: { nodes: cluster.nodes }, keyPrefix: '{myapp}:' } });
    } catch (e) {
      err = e as OpenAIConfigError;
    }
    expect(err).toBeInstanceOf(OpenAIConfigError);
    expect(err!.problems).toEqual([
      expect.objectContaining({
        path: 'storage.redis.keyPrefix',
        message: expect.stringMatching(/one Redis Cluster slot/),
      }),
    ]);
    expect(err!.message).toMatch(/Fix: drop the braces, e\.g\. 'myapp:'/);
    await expect(
      startThrottlingApp('express', fake.baseURL, {
        storage: { type: 'redis', redis: { url: cluster.clusterUrl, keyPrefix: 'a}b:' } },
      }),
    ).rejects.toThrow(/storage\.redis\.keyPrefix/);
  });

  it('1,000 concurrent requests over two instances (Express and Fastify) keep every user’s limit exactly', async () => {
    const { users, env } = sampleUsers(12);
    const common = {
      ...env,
      REDIS_CLUSTER_NODES: cluster.nodes.slice(0, 2).join(','),
      RATE_LIMIT_RPM: '40',
      MODERATION: 'off',
    };
    const a = await startSampleApp('express', fake, common);
    closers.push(() => a.close());
    const b = await startSampleApp('fastify', fake, common);
    closers.push(() => b.close());
    const bases = [await listen(a.app), await listen(b.app)];
    fake.reset();
    const byUser = new Map<string, number[]>();
    await Promise.all(
      Array.from({ length: 1_000 }, async (_, i) => {
        const u = users[i % users.length];
        const [r] = await flood(`${bases[i % 2]}/chat`, 1, () => ({
          method: 'POST',
          headers: jsonHeaders(u.token, { 'x-request-id': `cl-${i}` }),
          body: chatBody(`message ${i}`),
        }));
        byUser.set(u.name, [...(byUser.get(u.name) ?? []), r.status]);
      }),
    );
    const masters = new Set(
      await Promise.all(users.map((u) => cluster.masterOfSlot(clusterKeySlot(subjectKey(u.name, 'rl:req'))))),
    );
    expect(masters.size).toBeGreaterThanOrEqual(2);
    for (const u of users) {
      const statuses = byUser.get(u.name)!;
      expect(statuses.filter((s) => s !== 200 && s !== 429)).toEqual([]);
      expect({ user: u.name, ok: statuses.filter((s) => s === 200).length }).toEqual({
        user: u.name,
        ok: 40,
      });
    }
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(40 * users.length);
  }, 60_000);

  it('budgets are never overspent and usage totals equal the upstream calls, over two instances', async () => {
    const MAX_TOKENS = 100;
    const messages = [{ role: 'user' as const, content: 'hi' }];
    const mini = DEFAULT_PRICES['gpt-4o-mini'];
    const charged = Math.ceil(countChatPromptTokens(messages) * mini.input + MAX_TOKENS * mini.output - 1e-9);
    const budgetUsd = 0.001;
    const fits = Math.floor((budgetUsd * 1e6) / charged);
    expect(fits).toBeGreaterThan(2);
    const longFake = await FakeOpenAIServer.start({ reply: () => 'word '.repeat(400) });
    closers.push(() => longFake.close());
    const { users, env } = sampleUsers(6);
    const common = {
      ...env,
      REDIS_CLUSTER_NODES: cluster.nodes.join(','),
      BUDGET_USD_DAILY: String(budgetUsd),
      RATE_LIMIT_RPM: '1000',
      MODERATION: 'off',
      OPENAI_MAX_RETRIES: '0',
    };
    const a: SampleAppHandle = await startSampleApp('express', longFake, common);
    closers.push(() => a.close());
    const b: SampleAppHandle = await startSampleApp('fastify', longFake, common);
    closers.push(() => b.close());
    const projectBefore = (await a.app.get(UsageService).totals(null, 'day')).requests;
    const perUser = fits + 8;
    const results = await Promise.all(
      Array.from({ length: perUser * users.length }, async (_, i) => {
        const u = users[i % users.length];
        const res = await request((i % 2 ? a : b).server)
          .post('/chat')
          .set({ authorization: `Bearer ${u.token}` })
          .send({ messages, max_tokens: MAX_TOKENS });
        return { user: u, res };
      }),
    );
    for (const h of [a, b]) await h.app.get(UsageService).flush();
    for (const u of users) {
      const mine = results.filter((r) => r.user === u).map((r) => r.res);
      expect(mine.filter((r) => r.status !== 200 && r.status !== 429)).toEqual([]);
      const ok = mine.filter((r) => r.status === 200);
      expect({ user: u.name, ok: ok.length }).toEqual({ user: u.name, ok: fits });
      for (const r of mine.filter((x) => x.status === 429)) expect(r.body.error).toBe('budget_exceeded');
      const spent = ok.reduce((n, r) => n + (r.body.cost_usd as number), 0);
      expect(spent).toBeLessThanOrEqual(budgetUsd);
      const usage = await request(a.server)
        .get('/usage')
        .set({ authorization: `Bearer ${u.token}` });
      expect(usage.status).toBe(200);
      expect(usage.body.requests).toBe(fits);
      expect(usage.body.cost_usd).toBeCloseTo(spent, 9);
      expect(Math.round(usage.body.budget.remaining_usd * 1e6)).toBe(budgetUsd * 1e6 - fits * charged);
    }
    expect(longFake.requestsTo('/v1/chat/completions')).toHaveLength(fits * users.length);
    // The project's day totals are shared with the other tests of this file on the same cluster, whose
    // apps may still write their last usage (written once per usage.flushIntervalMs): at least these calls.
    const project = await a.app.get(UsageService).totals(null, 'day');
    expect(project.requests - projectBefore).toBeGreaterThanOrEqual(fits * users.length);
  }, 60_000);
});
