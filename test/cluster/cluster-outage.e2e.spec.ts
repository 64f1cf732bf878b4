import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeySlot } from '../../lib/storage/cluster-slot.js';
import { createStore } from '../../lib/storage/create-store.js';
import { subjectKey } from '../../lib/storage/openai-store.interface.js';
import { resolveOpenAIOptions } from '../../lib/options/resolve-options.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import type { CapturingLogger } from '../support/capturing-logger.js';
import { metricValue } from '../support/prometheus.js';
import { OwnRedisCluster, clusterAvailable } from '../support/redis-cluster.js';
import { waitFor } from '../support/redis.js';
import { startSampleApp, type SampleAppHandle } from '../support/sample-app.js';
import { chatBody, jsonHeaders, listen } from '../throttling/throttling-fixture.js';

const available = clusterAvailable();

const storeLines = (logger: CapturingLogger, pattern: RegExp) =>
  logger.lines.filter((l) => l.context === 'OpenAIStore' && pattern.test(String(l.message)));

interface Outcome {
  user: string;
  status: number;
  error?: string;
  ms: number;
  /** `performance.now()` when the request was sent. */
  sentAt: number;
}

async function chat(base: string, token: string, user: string): Promise<Outcome> {
  const t0 = performance.now();
  const res = await fetch(`${base}/chat`, {
    method: 'POST',
    headers: jsonHeaders(token),
    body: chatBody('hi'),
  });
  const body = (await res.json().catch(() => ({}))) as { error?: string };
  return { user, status: res.status, error: body.error, ms: performance.now() - t0, sentAt: t0 };
}

/**
 * The sample in production (fail-closed) on a 3-master cluster without replicas, 8 users spread over
 * the masters; one master is killed under load and started again.
 */
describe.skipIf(!available)('a Redis Cluster master dies under load (no replica)', () => {
  let cluster: OwnRedisCluster;
  let fake: FakeOpenAIServer;
  let app: SampleAppHandle;
  let base: string;
  const users = Array.from({ length: 8 }, (_, i) => ({
    name: `${randomBytes(3).toString('hex')}-o${i}`,
    token: `tok-${i}-${randomBytes(3).toString('hex')}`,
  }));
  beforeAll(async () => {
    [cluster, fake] = await Promise.all([OwnRedisCluster.start({ masters: 3 }), FakeOpenAIServer.start()]);
    app = await startSampleApp('express', fake, {
      NODE_ENV: 'production',
      REDIS_CLUSTER_NODES: cluster.nodes.join(','),
      SAMPLE_USERS: users.map((u) => `${u.name}:${u.token}`).join(','),
      RATE_LIMIT_RPM: '100000',
      RATE_LIMIT_TPM: '100000000',
      MODERATION: 'off',
    });
    base = await listen(app.app);
  }, 60_000);
  afterAll(async () => {
    await app?.close();
    await fake?.close();
    await cluster?.stop();
  });

  const health = async () => (await fetch(`${base}/health`)).status;
  const degraded = async () =>
    metricValue(await (await fetch(`${base}/metrics`)).text(), 'openai_storage_degraded', { store: 'redis' });

  it('keys on other masters are served, keys on the dead one get 503 at once; /health, metric and log follow, once per transition', async () => {
    const masterOf = async (u: { name: string }) =>
      cluster.masterOfSlot(clusterKeySlot(`openai:${subjectKey(u.name, 'rl:req')}`));
    const owners = await Promise.all(users.map(masterOf));
    const victim = owners[0];
    const affected = users.filter((_, i) => owners[i] === victim);
    const unaffected = users.filter((_, i) => owners[i] !== victim);
    expect(unaffected.length).toBeGreaterThan(0);

    // all served before
    for (const u of users) expect((await chat(base, u.token, u.name)).status).toBe(200);
    expect(await health()).toBe(200);
    expect(await degraded()).toBe(0);

    // load from 8 workers while the master dies
    const load = { stop: false };
    const during: Outcome[] = [];
    const workers = users.map(async (u) => {
      while (!load.stop) during.push(await chat(base, u.token, u.name));
    });
    await new Promise((r) => setTimeout(r, 150));
    await cluster.kill(victim);
    await waitFor('/health to report the outage', async () => (await health()) === 503, 10_000, 50);
    expect(await degraded()).toBe(1);

    // the outage, seen once it is known: only the dead master's users are refused, each at once (a
    // request sent before that may have passed its limits already and be answered 200 later)
    const knownAt = performance.now();
    await new Promise((r) => setTimeout(r, 1_000));
    load.stop = true;
    await Promise.all(workers);
    const outage = during.filter((o) => o.sentAt >= knownAt);
    const names = new Set(affected.map((u) => u.name));
    const hit = outage.filter((o) => names.has(o.user));
    const spared = outage.filter((o) => !names.has(o.user));
    expect(spared.length).toBeGreaterThan(20);
    expect(spared.filter((o) => o.status !== 200)).toEqual([]);
    expect(hit.length).toBeGreaterThan(20);
    expect(hit.filter((o) => o.status !== 503 || o.error !== 'storage_unavailable')).toEqual([]);
    // answered by the failure policy without waiting for the 500 ms command timeout: in one second of
    // sequential requests, a worker waiting 500 ms per request gets at most 2 answers
    expect(hit.length / affected.length).toBeGreaterThan(4);
    // nothing in between: every answer during the whole run was 200 or the policy's 503
    expect(during.filter((o) => o.status !== 200 && o.status !== 503)).toEqual([]);
    expect(during.filter((o) => o.status === 503 && !names.has(o.user))).toEqual([]);

    // a new instance cannot boot while a master is down, and says which
    const boot = await createStore(
      resolveOpenAIOptions({
        environment: 'test',
        apiKey: 'sk-test',
        storage: { type: 'redis', redis: { url: cluster.clusterUrl }, connectTimeoutMs: 800 },
      }),
    ).then(
      (s) => (void s.close(), undefined),
      (e: unknown) => e as Error,
    );
    expect(boot?.message).toContain(`127.0.0.1:${victim}`);

    // back without a restart of the app
    await cluster.restart(victim);
    await waitFor('/health to recover', async () => (await health()) === 200, 15_000, 50);
    expect(await degraded()).toBe(0);
    for (const u of users) expect((await chat(base, u.token, u.name)).status).toBe(200);

    expect(storeLines(app.logger, /unavailable, policy "fail-closed"/)).toHaveLength(1);
    expect(String(storeLines(app.logger, /unavailable/)[0].message)).toContain(`127.0.0.1:${victim}`);
    expect(storeLines(app.logger, /available again/)).toHaveLength(1);
    const errors = metricValue(await (await fetch(`${base}/metrics`)).text(), 'openai_storage_errors_total', {
      store: 'redis',
    });
    expect(errors).toBe(1);
  }, 60_000);
});
