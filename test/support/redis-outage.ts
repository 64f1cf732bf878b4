import { afterAll, afterEach, beforeAll } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { OwnRedis } from './redis.js';

/** What a Redis-outage suite shares: its own redis-server, a fake upstream, the apps its tests started. */
export interface RedisOutageSuite {
  readonly redis: OwnRedis;
  readonly fake: FakeOpenAIServer;
  /** Apps a test started: closed after it. */
  readonly apps: Array<{ close(): Promise<void> }>;
}

/**
 * Registers, in the calling `describe`, a redis-server of the suite's own (to kill and restart, never the
 * shared one) and a fake upstream, both started once; after each test its apps are closed, Redis is
 * started again (empty) if the test stopped it, and the fake's faults are reset.
 */
export function redisOutageSuite(): RedisOutageSuite {
  const suite = { apps: [] } as unknown as {
    redis: OwnRedis;
    fake: FakeOpenAIServer;
    apps: RedisOutageSuite['apps'];
  };
  beforeAll(async () => {
    suite.redis = await OwnRedis.start();
    suite.fake = await FakeOpenAIServer.start();
  });
  afterEach(async () => {
    while (suite.apps.length) await suite.apps.pop()!.close();
    await suite.redis.start();
    suite.fake.reset();
  });
  afterAll(async () => {
    await suite.redis.stop();
    await suite.fake.close();
  });
  return suite;
}
