import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeySlot } from '../../lib/storage/cluster-slot.js';
import { subjectKey } from '../../lib/storage/openai-store.interface.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import type { CapturingLogger } from '../support/capturing-logger.js';
import { OwnRedisCluster, clusterAvailable } from '../support/redis-cluster.js';
import { waitFor } from '../support/redis.js';
import { startSampleApp, type SampleAppHandle } from '../support/sample-app.js';
import { chatBody, jsonHeaders, listen } from '../throttling/throttling-fixture.js';

const available = clusterAvailable();

const storeLines = (logger: CapturingLogger, pattern: RegExp) =>
  logger.lines.filter((l) => l.context === 'OpenAIStore' && pattern.test(String(l.message)));

/** 3 masters with a replica each: a killed master's replica takes over, and the app follows it. */
describe.skipIf(!available)('a Redis Cluster master dies and its replica takes over', () => {
  let cluster: OwnRedisCluster;
  let fake: FakeOpenAIServer;
  let app: SampleAppHandle;
  let base: string;
  const users = Array.from({ length: 6 }, (_, i) => ({
    name: `${randomBytes(3).toString('hex')}-f${i}`,
    token: `tok-${i}-${randomBytes(3).toString('hex')}`,
  }));
  beforeAll(async () => {
    [cluster, fake] = await Promise.all([
      OwnRedisCluster.start({ masters: 3, replicas: 1 }),
      FakeOpenAIServer.start(),
    ]);
    app = await startSampleApp('fastify', fake, {
      NODE_ENV: 'production',
      REDIS_CLUSTER_NODES: cluster.nodes.slice(0, 3).join(','),
      SAMPLE_USERS: users.map((u) => `${u.name}:${u.token}`).join(','),
      RATE_LIMIT_RPM: '100000',
      MODERATION: 'off',
    });
    base = await listen(app.app);
  }, 60_000);
  afterAll(async () => {
    await app?.close();
    await fake?.close();
    await cluster?.stop();
  });

  const status = async (u: { token: string }) =>
    (await fetch(`${base}/chat`, { method: 'POST', headers: jsonHeaders(u.token), body: chatBody('hi') }))
      .status;
  const health = async () => (await fetch(`${base}/health`)).status;

  it('refused (503) only while no master holds the slots, served again after the failover, without a restart', async () => {
    const slot = clusterKeySlot(`openai:${subjectKey(users[0].name, 'rl:req')}`);
    const victim = await cluster.masterOfSlot(slot);
    for (const u of users) expect(await status(u)).toBe(200);

    await cluster.kill(victim);
    await waitFor('/health to report the outage', async () => (await health()) === 503, 10_000, 50);
    const during = await status(users[0]);
    // the replica may already have taken over; until it has, the policy answers
    expect([200, 503]).toContain(during);

    await waitFor(
      'a replica to take over the slots',
      async () => (await cluster.masterOfSlot(slot)) !== victim,
      20_000,
      100,
    );
    await waitFor('/health to recover', async () => (await health()) === 200, 20_000, 100);
    for (const u of users)
      expect({ user: u.name, status: await status(u) }).toEqual({ user: u.name, status: 200 });
    expect(storeLines(app.logger, /unavailable, policy "fail-closed"/)).toHaveLength(1);
    expect(storeLines(app.logger, /available again/)).toHaveLength(1);
  }, 60_000);
});
