import { OpenAIProductionError } from '../errors/openai-production.error.js';
import type { ResolvedOpenAIOptions } from '../interfaces/openai-module-options.interface.js';
import { MemoryStore } from './memory.store.js';
import type { OpenAIStore } from './openai-store.interface.js';
import { RedisStore } from './redis.store.js';
import { ResilientStore } from './resilient.store.js';

/**
 * The store the options ask for. Redis: the client is opened (or the given one pinged) at boot, and a
 * Redis that does not answer within `storage.connectTimeoutMs` fails the boot.
 * @throws OpenAIProductionError when Redis is unreachable at boot or `ioredis` is not installed.
 */
export async function createStore(options: ResolvedOpenAIOptions): Promise<OpenAIStore> {
  const s = options.storage;
  if (s.type !== 'redis') return new MemoryStore(s.memory);
  let RedisCtor: (typeof import('ioredis'))['Redis'] | undefined;
  if (!s.redis?.client) {
    try {
      RedisCtor = (await import('ioredis')).Redis;
    } catch (err) {
      throw new OpenAIProductionError(
        'storage.type is "redis" but the package "ioredis" is not installed. Fix: npm install ioredis',
        { cause: err },
      );
    }
  }
  const redis = new RedisStore(s.redis ?? {}, RedisCtor);
  try {
    // The client's own PING, bounded by connectTimeoutMs: the store's ping() is bounded by the much shorter
    // commandTimeoutMs, which would fail the boot of a client that is still connecting.
    if (s.redis?.client) await withTimeout(redis.client.ping(), s.connectTimeoutMs);
    else await redis.waitReady(s.connectTimeoutMs);
  } catch (err) {
    await redis.close();
    const where = s.redis?.url ? s.redis.url.replace(/\/\/[^@/]*@/, '//***@') : 'the given client';
    throw new OpenAIProductionError(
      `storage.redis: Redis at ${where} did not answer within ${s.connectTimeoutMs} ms (${(err as Error).message}). Fix: start Redis, correct storage.redis.url, or use storage.type 'memory'`,
      { cause: err },
    );
  }
  return new ResilientStore(redis, s.onFailure, s.instances);
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e: unknown) => (clearTimeout(t), reject(e)),
    );
  });
}
