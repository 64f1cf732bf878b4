import 'reflect-metadata';
import { Body, Controller, Headers, HttpCode, Post } from '@nestjs/common';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BudgetService,
  OpenAIService,
  type BudgetAlertEvent,
  type ChatRequest,
  type OpenAIModuleOptions,
} from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
  type Platform,
} from '../support/fixture-app.js';
import { keysUnder, redisClient, sharedRedisUrl, uniquePrefix } from '../support/redis.js';

const redisUrl = sharedRedisUrl();
const MODEL = 'gpt-4o-mini-2024-07-18';
const MESSAGES = [{ role: 'user' as const, content: 'hello there' }];
// With a price of 1 USD per 1M tokens and a reply longer than max_tokens, each call costs exactly 100 micro-USD.
const MAX_TOKENS = 100 - countChatPromptTokens(MESSAGES);
const LONG_REPLY = Array.from({ length: 300 }, (_, i) => `w${i}`).join(' ');

@Controller()
class PerUserChatController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat(@Body() body: ChatRequest, @Headers('x-user') user: string) {
    const r = await this.openai.chat(body, { user });
    return { cost_usd: r.costUsd };
  }
}

interface Instance {
  h: FixtureHandle;
  viaOption: BudgetAlertEvent[];
  viaStream: BudgetAlertEvent[];
}

async function startInstance(
  platform: Platform,
  fake: FakeOpenAIServer,
  budgets: OpenAIModuleOptions['budgets'],
  extra: OpenAIModuleOptions = {},
): Promise<Instance> {
  const viaOption: BudgetAlertEvent[] = [];
  const viaStream: BudgetAlertEvent[] = [];
  const h = await startFixtureApp(
    platform,
    fixtureOptions(fake.baseURL, TEST_API_KEY, {
      ...extra,
      pricing: { models: { [MODEL]: { input: 1, output: 1 } } },
      budgets: { ...budgets, onAlert: (e) => void viaOption.push(e) },
      retry: { maxRetries: 0 },
    }),
    { controllers: [PerUserChatController] },
  );
  h.app.get(BudgetService).alerts$.subscribe((e) => viaStream.push(e));
  return { h, viaOption, viaStream };
}

const flood = (instances: Instance[], user: string, n: number) =>
  Promise.all(
    Array.from({ length: n }, (_, i) =>
      request(instances[i % instances.length].h.server)
        .post('/chat')
        .set('x-user', user)
        .send({ messages: MESSAGES, max_tokens: MAX_TOKENS }),
    ),
  );

const key = (e: BudgetAlertEvent) => `${e.scope}:${e.user ?? '-'}:${e.period}:${e.threshold}`;
const today = () => `${new Date().toISOString().slice(0, 10)}T00:00:00.000Z`;
const thisMonth = () => `${new Date().toISOString().slice(0, 7)}-01T00:00:00.000Z`;

describe.each(PLATFORMS)('budget alerts on %s, memory store', (platform) => {
  let fake: FakeOpenAIServer;
  let dflt: Instance;
  let custom: Instance;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ reply: () => LONG_REPLY });
    dflt = await startInstance(platform, fake, {
      user: { dailyUsd: 0.001, monthlyUsd: 0.002 },
      project: { dailyUsd: 0.004 },
    });
    custom = await startInstance(platform, fake, {
      user: { dailyUsd: 0.001 },
      alertThresholds: [0.9, 0.3, 0.6],
    });
  });
  afterAll(async () => {
    await dflt?.h.close();
    await custom?.h.close();
    await fake?.close();
  });

  it('the default thresholds 0.5, 0.8 and 1 fire exactly once per period and subject under 20 concurrent calls', async () => {
    const results = await flood([dflt], 'alice', 20);
    expect(results.filter((r) => r.status === 200)).toHaveLength(10);
    expect(results.filter((r) => r.status === 429)).toHaveLength(10);
    await dflt.h.app.get(BudgetService).flush();
    expect(dflt.viaOption.map(key).sort()).toEqual([
      'user:alice:day:0.5',
      'user:alice:day:0.8',
      'user:alice:day:1',
      'user:alice:month:0.5',
    ]);
    expect(dflt.viaStream.map(key).sort()).toEqual(dflt.viaOption.map(key).sort());
    for (const e of dflt.viaOption) {
      expect(e.limitUsd).toBe(e.period === 'day' ? 0.001 : 0.002);
      expect(e.spentUsd).toBeGreaterThanOrEqual(e.threshold * e.limitUsd);
      expect(e.spentUsd).toBeLessThanOrEqual(0.001);
      expect(e.periodStart).toBe(e.period === 'day' ? today() : thisMonth());
    }
    // more refused calls, and calls by another user, fire nothing more for alice
    await flood([dflt], 'alice', 5);
    await flood([dflt], 'bob', 2);
    await dflt.h.app.get(BudgetService).flush();
    expect(dflt.viaOption.filter((e) => e.user === 'alice')).toHaveLength(4);
    expect(dflt.viaOption.filter((e) => e.user === 'bob')).toEqual([]);
  });

  it('custom thresholds fire each once, and only those', async () => {
    const results = await flood([custom], 'carol', 14);
    expect(results.filter((r) => r.status === 200)).toHaveLength(10);
    await custom.h.app.get(BudgetService).flush();
    expect(custom.viaOption.map(key).sort()).toEqual([
      'user:carol:day:0.3',
      'user:carol:day:0.6',
      'user:carol:day:0.9',
    ]);
    expect(custom.viaStream.map(key).sort()).toEqual(custom.viaOption.map(key).sort());
  });
});

describe.skipIf(!redisUrl).each(PLATFORMS)('budget alerts on two %s instances sharing Redis', (platform) => {
  const prefix = uniquePrefix(`alerts-${platform}`);
  let fake: FakeOpenAIServer;
  let a: Instance;
  let b: Instance;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ reply: () => LONG_REPLY });
    const budgets = { user: { dailyUsd: 0.001, monthlyUsd: 0.002 }, project: { dailyUsd: 0.002 } };
    const storage = { storage: { type: 'redis' as const, redis: { url: redisUrl, keyPrefix: prefix } } };
    a = await startInstance(platform, fake, budgets, storage);
    b = await startInstance(platform, fake, budgets, storage);
  });
  afterAll(async () => {
    await a?.h.close();
    await b?.h.close();
    await fake?.close();
  });

  it('each threshold fires exactly once per period and subject across both instances', async () => {
    const results = await flood([a, b], 'dora', 24);
    expect(results.filter((r) => r.status === 200)).toHaveLength(10);
    expect(results.filter((r) => r.status === 429)).toHaveLength(14);
    await a.h.app.get(BudgetService).flush();
    await b.h.app.get(BudgetService).flush();
    const all = [...a.viaOption, ...b.viaOption];
    expect(all.map(key).sort()).toEqual([
      'project:-:day:0.5',
      'user:dora:day:0.5',
      'user:dora:day:0.8',
      'user:dora:day:1',
      'user:dora:month:0.5',
    ]);
    expect(a.viaStream.map(key).sort()).toEqual(a.viaOption.map(key).sort());
    expect(b.viaStream.map(key).sort()).toEqual(b.viaOption.map(key).sort());
    // the state really is in Redis, under this suite's prefix
    const client = redisClient(redisUrl);
    try {
      expect((await keysUnder(client, `${prefix}{budget:alert:`)).length).toBe(5);
    } finally {
      client.disconnect();
    }
  });
});
