import { describe, expect, it } from 'vitest';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import { OpenAIConfigError } from '../errors/openai-config.error.js';
import { clusterKeySlot } from './cluster-slot.js';
import { subjectKey, trackerKey } from './openai-store.interface.js';
import { clusterOptions, isClusterUrl, parseClusterUrl, parseNode } from './redis-cluster.js';
import { redisStoreProblems } from './redis-options.validate.js';

describe('cluster key slots', () => {
  it('CRC16/XMODEM as Redis Cluster hashes, hash tags honoured', () => {
    expect(clusterKeySlot('123456789')).toBe(0x31c3);
    expect(clusterKeySlot('foo')).toBe(12182);
    expect(clusterKeySlot('{user1000}.following')).toBe(clusterKeySlot('{user1000}.followers'));
    expect(clusterKeySlot('{}.x')).toBe(clusterKeySlot('{}.x')); // empty tag: the whole key
    expect(clusterKeySlot('{}.x')).not.toBe(clusterKeySlot('{}.y'));
  });

  it("one user's keys share a slot; braces in a user name cannot change the tag", () => {
    const keys = [
      trackerKey('user:alice', 'rl:req'),
      subjectKey('alice', 'rl:tok'),
      subjectKey('alice', 'budget'),
      subjectKey('alice', 'usage:2024-07'),
    ].map((k) => `openai:${k}:minute`);
    expect(new Set(keys.map(clusterKeySlot)).size).toBe(1);
    expect(subjectKey('a}b{c', 'x')).toBe('{u:a%7Db%7Bc}:x');
    expect(trackerKey('ip:10.0.0.1', 'rl:req')).toBe('{ip%3A10%2E0%2E0%2E1}:rl:req');
  });
});

describe('cluster configuration', () => {
  it('parses redis+cluster:// URLs with credentials and TLS', () => {
    expect(isClusterUrl('redis+cluster://a:1')).toBe(true);
    expect(isClusterUrl('redis://a:1')).toBe(false);
    expect(parseClusterUrl('rediss+cluster://me:p%40ss@h1:7001,h2:7002/0')).toEqual({
      nodes: [
        { host: 'h1', port: 7001 },
        { host: 'h2', port: 7002 },
      ],
      redisOptions: { username: 'me', password: 'p@ss', tls: {} },
    });
    expect(parseClusterUrl('redis+cluster://:secret@h1:7001').redisOptions).toEqual({ password: 'secret' });
    expect(() => parseClusterUrl('redis+cluster://h1:7001/3')).toThrow(/database 0/);
    expect(() => parseClusterUrl('redis+cluster://h1')).toThrow(/host:port/);
    expect(parseNode({ host: 'h', port: 1 })).toEqual({ host: 'h', port: 1 });
    expect(() => parseNode('h:99999')).toThrow(/not host:port/);
  });

  it('user options win over the fail-fast defaults, redisOptions merged field by field', () => {
    const o = clusterOptions(
      { maxRedirections: 2, redisOptions: { connectTimeout: 500 } },
      { password: 'x' },
    );
    expect(o).toMatchObject({ maxRedirections: 2, enableOfflineQueue: false, slotsRefreshTimeout: 1_000 });
    expect(o.redisOptions).toMatchObject({ connectTimeout: 500, maxRetriesPerRequest: 1, password: 'x' });
  });

  it('the validator lists every problem of storage.redis', () => {
    const paths = (type: string, redis: object) =>
      redisStoreProblems(type, redis as never).map((p) => p.path);
    expect(paths('redis', {})).toEqual(['storage.redis']);
    expect(paths('redis', { url: 'redis+cluster://h:1', cluster: { nodes: ['h:1'] } })).toEqual([
      'storage.redis',
    ]);
    expect(paths('redis', { cluster: { nodes: [] } })).toEqual(['storage.redis.cluster.nodes']);
    expect(paths('redis', { cluster: { nodes: ['h:1', 'nope'] } })).toEqual([
      'storage.redis.cluster.nodes[1]',
    ]);
    expect(paths('redis', { url: 'http://h:1' })).toEqual(['storage.redis.url']);
    expect(paths('redis', { url: 'redis+cluster://h' })).toEqual(['storage.redis.url']);
    expect(paths('redis', { url: 'redis://h:1', keyPrefix: '{app}:', healthCheckIntervalMs: 0 })).toEqual([
      'storage.redis.keyPrefix',
      'storage.redis.healthCheckIntervalMs',
    ]);
    expect(paths('redis', { url: 'redis+cluster://h:1,h:2', keyPrefix: 'app:' })).toEqual([]);
  });

  it('resolveOpenAIOptions refuses a brace keyPrefix among its other problems', () => {
    let err: unknown;
    try {
      resolveOpenAIOptions({
        environment: 'test',
        apiKey: 'sk-test',
        storage: { type: 'redis', redis: { url: 'redis://h:1', keyPrefix: '{myapp}:' }, instances: 0 },
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OpenAIConfigError);
    expect((err as OpenAIConfigError).problems.map((p) => p.path)).toEqual(
      expect.arrayContaining(['storage.redis.keyPrefix', 'storage.instances']),
    );
  });
});
