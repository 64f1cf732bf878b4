import { Logger } from '@nestjs/common';
import { OpenAIProductionError } from '../errors/openai-production.error.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { MemoryStore } from './memory.store.js';
import type { OpenAIStore } from './openai-store.interface.js';
import { sharedNodeOptions } from './redis-cluster.js';
import { RedisStore, type RedisStoreOptions } from './redis.store.js';
import { ResilientStore } from './resilient.store.js';

const masked = (url: string) => url.replace(/\/\/[^@/]*@/, '//***@');

/**
 * The store the options ask for. Redis: the client is opened (or the given one checked) at boot, and a
 * Redis that does not answer within `storage.connectTimeoutMs` fails the boot. A Redis Cluster (given,
 * from `storage.redis.cluster`, a `redis+cluster://` URL, or a plain URL that turns out to point at a
 * cluster node) must have every master answering and `cluster_state:ok` by then.
 * @throws OpenAIProductionError when Redis is unreachable at boot or `ioredis` is not installed.
 */
export async function createStore(options: ResolvedOpenAIOptions): Promise<OpenAIStore> {
  const s = options.storage;
  if (s.type !== 'redis') return new MemoryStore(s.memory);
  const config: RedisStoreOptions = s.redis ?? {};
  let ioredis: Pick<typeof import('ioredis'), 'Redis' | 'Cluster'> | undefined;
  try {
    const { Redis, Cluster } = await import('ioredis');
    ioredis = { Redis, Cluster };
  } catch (err) {
    // A given client brings its own ioredis (probes of a lost cluster node then use its class).
    if (!config.client)
      throw new OpenAIProductionError(
        'storage.type is "redis" but the package "ioredis" is not installed. Fix: npm install ioredis',
        { cause: err },
      );
  }
  const where = config.client
    ? 'the given client'
    : config.url
      ? masked(config.url)
      : `the cluster seeds ${(config.cluster?.nodes ?? []).map((n) => (typeof n === 'string' ? n : `${n.host}:${n.port}`)).join(', ')}`;
  let redis = new RedisStore(config, ioredis?.Redis, ioredis?.Cluster);
  try {
    await redis.connect(s.connectTimeoutMs);
    // A plain URL to a cluster node would serve only that node's slots and fail every other key with MOVED.
    if (!redis.monitor && ioredis && config.url && (await redis.pointsAtCluster(s.connectTimeoutMs))) {
      const seed = redis.client.options as { host?: string; port?: number };
      const shared = sharedNodeOptions(redis.client as import('ioredis').Redis);
      await redis.close();
      new Logger('OpenAIStore').warn(
        `storage.redis.url ${masked(config.url)} points at a Redis Cluster node: connecting to the cluster through it. Prefer storage.redis.url 'redis+cluster://host1:port1,host2:port2' or storage.redis.cluster.nodes, listing several seeds`,
      );
      redis = new RedisStore(
        {
          ...config,
          url: undefined,
          cluster: {
            nodes: [{ host: seed.host ?? '127.0.0.1', port: seed.port ?? 6379 }],
            options: { redisOptions: { ...shared, ...config.redisOptions } },
          },
        },
        ioredis.Redis,
        ioredis.Cluster,
      );
      await redis.connect(s.connectTimeoutMs);
    }
  } catch (err) {
    await redis.close();
    throw new OpenAIProductionError(
      `storage.redis: Redis at ${where} did not answer within ${s.connectTimeoutMs} ms (${(err as Error).message}). Fix: start Redis, correct storage.redis.url, or use storage.type 'memory' (a cluster: check storage.redis.cluster or the redis+cluster:// seeds, and that every master is up)`,
      { cause: err },
    );
  }
  return new ResilientStore(redis, s.onFailure, s.instances);
}
