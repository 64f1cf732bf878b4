import { spawn, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { freePort, sharedRedisUrl, uniquePrefix } from '../../test/support/redis.js';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import type { StorageOptions } from '../options/openai-module-options.interface.js';
import { createStore } from './create-store.js';
import { MemoryStore } from './memory.store.js';
import { ResilientStore } from './resilient.store.js';

const url = sharedRedisUrl();
const options = (storage: StorageOptions) =>
  resolveOpenAIOptions({ environment: 'test', apiKey: 'sk-test', storage });

describe('createStore', () => {
  it('memory by default, with its options', async () => {
    const s = await createStore(options({ memory: { maxKeys: 2 } }));
    expect(s).toBeInstanceOf(MemoryStore);
    for (const k of ['a', 'b', 'c']) await s.set(k, 'v', 1_000);
    expect((s as MemoryStore).size).toBe(2);
    await s.close();
  });

  it('an unreachable Redis fails at boot, naming the fix, with the password masked', async () => {
    const port = await freePort();
    const started = Date.now();
    const err = (await createStore(
      options({
        type: 'redis',
        redis: { url: `redis://user:s3cret@127.0.0.1:${port}` },
        connectTimeoutMs: 300,
      }),
    ).then(
      () => undefined,
      (e: unknown) => e,
    )) as Error;
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/did not answer within 300 ms/);
    expect(err.message).toMatch(
      /Fix: start Redis, correct storage\.redis\.url, or use storage\.type 'memory'/,
    );
    expect(err.message).toContain(`redis://***@127.0.0.1:${port}`);
    expect(err.message).not.toContain('s3cret');
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it.skipIf(!url)('redis: a ResilientStore with the failure policy over a ready client', async () => {
    const s = await createStore(
      options({
        type: 'redis',
        redis: { url, keyPrefix: uniquePrefix('create') },
        onFailure: 'fail-open',
        instances: 2,
      }),
    );
    expect(s).toBeInstanceOf(ResilientStore);
    expect((s as ResilientStore).policy).toBe('fail-open');
    expect(s.kind).toBe('redis');
    await s.ping();
    await s.close();
  });

  it.skipIf(!url)('redis with a given client: pinged at boot, never closed by the store', async () => {
    const client = new Redis(url);
    const s = await createStore(
      options({ type: 'redis', redis: { client, keyPrefix: uniquePrefix('create') } }),
    );
    await s.close();
    expect(await client.ping()).toBe('PONG');
    client.disconnect();
  });

  it.skipIf(!url)(
    'redis with a given client still connecting: waits up to connectTimeoutMs, not commandTimeoutMs',
    async () => {
      const port = await freePort();
      // The app's client is created before its Redis is up; Redis comes up after 3 x commandTimeoutMs.
      const client = new Redis({ port, host: '127.0.0.1', retryStrategy: () => 100 });
      client.on('error', () => undefined);
      let server: ChildProcess | undefined;
      const late = setTimeout(() => {
        server = spawn(
          'redis-server',
          ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
          {
            stdio: 'ignore',
          },
        );
      }, 600);
      try {
        const s = await createStore(
          options({ type: 'redis', redis: { client, commandTimeoutMs: 200 }, connectTimeoutMs: 8_000 }),
        );
        expect(s).toBeInstanceOf(ResilientStore);
        await s.close();
      } finally {
        clearTimeout(late);
        client.disconnect();
        server?.kill('SIGKILL');
      }
    },
    15_000,
  );
});
