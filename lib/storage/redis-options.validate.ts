import type { ConfigProblem } from '../errors/openai-config.error.js';
import { isClusterUrl, parseClusterUrl, parseNode } from './redis-cluster.js';
import type { RedisStoreOptions } from './redis.store.js';

const isPositiveInt = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v > 0;

/**
 * Problems of `storage.redis` (none when valid): a Redis store needs exactly one connection (`url`,
 * `client` or `cluster`); a URL is `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://`;
 * cluster seeds are `host:port`; a `keyPrefix` holds no `{` or `}` (a hash tag there would put every key
 * in one cluster slot, on one master).
 */
export function redisStoreProblems(type: string, redis: RedisStoreOptions | undefined): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const add = (path: string, message: string, fix: string) => out.push({ path, message, fix });
  const connections = (['url', 'client', 'cluster'] as const).filter((k) => redis?.[k] !== undefined);
  if (type === 'redis' && connections.length === 0)
    add(
      'storage.redis',
      'a Redis store needs a connection',
      "set storage.redis.url (e.g. redis://127.0.0.1:6379), storage.redis.cluster ({ nodes: ['host:port', ...] }) or storage.redis.client",
    );
  if (connections.length > 1)
    add(
      'storage.redis',
      `sets ${connections.join(' and ')}: only one connection may be given`,
      'keep one of url, cluster and client',
    );
  if (redis?.url !== undefined) {
    if (typeof redis.url === 'string' && isClusterUrl(redis.url)) {
      try {
        parseClusterUrl(redis.url);
      } catch (err) {
        add(
          'storage.redis.url',
          `is not a valid cluster URL (${(err as Error).message})`,
          'use a URL such as redis+cluster://10.0.0.1:6379,10.0.0.2:6379',
        );
      }
    } else {
      try {
        if (!/^rediss?:$/.test(new URL(redis.url).protocol)) throw new Error('protocol');
      } catch {
        add(
          'storage.redis.url',
          'is not a redis://, rediss:// or redis+cluster:// URL',
          'use a URL such as redis://127.0.0.1:6379 (one Redis) or redis+cluster://10.0.0.1:6379,10.0.0.2:6379 (a cluster)',
        );
      }
    }
  }
  if (redis?.cluster !== undefined) {
    const nodes = redis.cluster?.nodes;
    if (!Array.isArray(nodes) || nodes.length === 0)
      add(
        'storage.redis.cluster.nodes',
        'must list at least one seed node',
        "list 'host:port' of a few masters",
      );
    else
      nodes.forEach((n, i) => {
        try {
          parseNode(n);
        } catch (err) {
          add(
            `storage.redis.cluster.nodes[${i}]`,
            (err as Error).message,
            "write 'host:port', e.g. '10.0.0.1:6379'",
          );
        }
      });
  }
  const prefix = redis?.keyPrefix;
  if (prefix !== undefined && (typeof prefix !== 'string' || /[{}]/.test(prefix)))
    add(
      'storage.redis.keyPrefix',
      `must not contain "{" or "}" (got ${JSON.stringify(prefix)}): a hash tag in the prefix puts every key in one Redis Cluster slot, on one master`,
      `drop the braces, e.g. '${typeof prefix === 'string' ? prefix.replace(/[{}]/g, '') || 'myapp:' : 'myapp:'}'; the library tags each key by user itself`,
    );
  if (redis?.commandTimeoutMs !== undefined && !isPositiveInt(redis.commandTimeoutMs))
    add('storage.redis.commandTimeoutMs', 'must be a positive integer (ms)', 'set a value such as 500');
  if (redis?.healthCheckIntervalMs !== undefined && !isPositiveInt(redis.healthCheckIntervalMs))
    add('storage.redis.healthCheckIntervalMs', 'must be a positive integer (ms)', 'set a value such as 1000');
  return out;
}
