import { Body, Controller, HttpCode, Post, UseGuards } from '@nestjs/common';
import type { Redis } from 'ioredis';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenAIService, OpenAIThrottlerGuard, UsageService, type ChatRequest } from '../../lib/index.js';
import { CallPipeline } from '../../lib/call/call-pipeline.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { redisClient, sharedRedisUrl, uniquePrefix, waitFor } from '../support/redis.js';

const redisUrl = sharedRedisUrl();

@Controller()
class GuardedController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  @UseGuards(OpenAIThrottlerGuard)
  async chat(@Body() body: ChatRequest) {
    const r = await this.openai.chat(body);
    return { content: r.content };
  }
}

/** One client command (not the commands a script runs inside Redis) on keys under the test's prefix. */
interface Seen {
  command: string;
  sha?: string;
  args: string[];
}

describe.skipIf(!redisUrl)('Redis round trips of a guarded, metered request', () => {
  describe.each(PLATFORMS)('%s', (platform) => {
    let fake: FakeOpenAIServer;
    let h: FixtureHandle;
    let admin: Redis;
    const prefix = uniquePrefix(`round-trips-${platform}`);
    beforeAll(async () => {
      fake = await FakeOpenAIServer.start();
      admin = redisClient(redisUrl);
      h = await startFixtureApp(
        platform,
        fixtureOptions(fake.baseURL, TEST_API_KEY, {
          identity: { resolve: (req: { headers: Record<string, string> }) => req.headers['x-user'] },
          limits: {
            requests: [{ name: 'minute', limit: 1_000, ttl: 60_000 }],
            tokens: [{ name: 'minute', limit: 1_000_000, ttl: 60_000 }],
          },
          budgets: { user: { dailyUsd: 100 }, project: { monthlyUsd: 1_000 } },
          usage: { enabled: true },
          // the production profile's circuit breaker and pacing: no store round trip per call
          breaker: { failures: 5 },
          pacing: { mode: 'queue' },
          storage: { type: 'redis', redis: { url: redisUrl, keyPrefix: prefix }, onFailure: 'fail-closed' },
        }),
        { controllers: [GuardedController] },
      );
    });
    afterAll(async () => {
      await h?.close();
      admin?.disconnect();
      await fake?.close();
    });

    it('the guard, then one script reserving the token limit and the user budget together, one settlement write; breaker and pacing read nothing', async () => {
      const send = (user: string) =>
        request(h.server)
          .post('/chat')
          .set('x-user', user)
          .send({ messages: [{ role: 'user', content: 'hello' }] })
          .expect(200);
      // Warm-up: scripts loaded, the project budget's lease taken.
      for (let i = 0; i < 3; i++) await send('warm');
      await h.app.get(CallPipeline).flush();
      await h.app.get(UsageService).flush();

      const has = (s: Seen, part: string) => s.args.some((a) => a.startsWith(prefix) && a.includes(part));
      const monitor = await admin.monitor();
      const seen: Seen[] = [];
      monitor.on('monitor', (_time: string, args: string[], source: string) => {
        if (source === 'lua' || !args.some((a) => a.startsWith(prefix))) return;
        const command = args[0].toLowerCase();
        seen.push({ command, sha: command === 'evalsha' ? args[1] : undefined, args });
      });
      const N = 20;
      try {
        for (let i = 0; i < N; i++) await send('alice');
        await h.app.get(CallPipeline).flush();
        // every settlement written (flush waited for them); MONITOR reports them a moment later
        await waitFor(
          'the last settlement to reach MONITOR',
          () => seen.filter((s) => has(s, 'rl:tok')).length >= 2 * N,
        );
      } finally {
        monitor.disconnect();
      }
      const guard = seen.filter((s) => has(s, 'rl:req'));
      expect(guard).toHaveLength(N);
      const consumeSha = guard[0].sha;
      // One command holds both the token window and the user's budget (same script as the guard's consume).
      const reservations = seen.filter((s) => s.sha === consumeSha && has(s, 'rl:tok'));
      expect(reservations).toHaveLength(N);
      for (const r of reservations) expect(has(r, '{u:alice}:budget')).toBe(true);
      // One command settles both.
      const settlements = seen.filter((s) => s.sha !== consumeSha && has(s, 'rl:tok'));
      expect(settlements).toHaveLength(N);
      for (const s of settlements) expect(has(s, '{u:alice}:budget')).toBe(true);
      // Nothing per request on the project budget (served from this instance's lease) and no separate
      // budget reads or writes; the usage ledger is written once per flush interval, not per request.
      const budgetOnly = seen.filter((s) => has(s, 'budget') && !has(s, 'rl:tok'));
      expect(budgetOnly).toEqual([]);
      const other = seen.filter((s) => !has(s, 'rl:req') && !has(s, 'rl:tok'));
      expect(other.length).toBeLessThan(N / 2);
      expect(seen.filter((s) => has(s, 'breaker') || has(s, 'pace'))).toEqual([]);
      expect(fake.requestsTo('/v1/chat/completions').length).toBe(N + 3);
    });
  });
});
