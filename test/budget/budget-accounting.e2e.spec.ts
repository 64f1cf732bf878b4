import 'reflect-metadata';
import { Body, Controller, Headers, HttpCode, Post } from '@nestjs/common';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BudgetService, OpenAIService, UsageService, type ChatRequest } from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  sseEvents,
  sseText,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { waitFor } from '../support/redis.js';
import { auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';

const LONG_REPLY = Array.from({ length: 400 }, (_, i) => `w${i}`).join(' ');

/** Starts a stream on the app's server and disconnects once the first delta has arrived. */
async function streamAndDisconnect(
  server: FixtureHandle['server'],
  token: string,
  requestId: string,
  body: object,
): Promise<string> {
  if (!server.address()) await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        path: '/chat/stream',
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${token}`,
          'x-request-id': requestId,
        },
      },
      (res) => {
        let data = '';
        res.on('data', (c: Buffer) => {
          data += c.toString();
          if (data.includes('"delta"')) {
            req.destroy();
            resolve(data);
          }
        });
        res.on('error', () => undefined);
        res.on('end', () => reject(new Error(`stream ended before a delta: ${data}`)));
      },
    );
    req.on('error', () => undefined);
    req.end(JSON.stringify(body));
  });
}

const micro = (usd: number) => Math.ceil(usd * 1e6 - 1e-6);

describe.each(PLATFORMS)(
  'the budget counter equals the real spend after every kind of ending, on %s',
  (platform) => {
    let fake: FakeOpenAIServer;
    let h: SampleAppHandle;
    beforeAll(async () => {
      fake = await FakeOpenAIServer.start({ reply: () => LONG_REPLY, streamChunkDelayMs: 15 });
      h = await startSampleApp(platform, fake, {
        BUDGET_USD_DAILY: '1',
        RATE_LIMIT_RPM: '1000',
        MODERATION: 'off',
        OPENAI_MAX_RETRIES: '0',
        OPENAI_TIMEOUT_MS: '400',
      });
    });
    afterAll(async () => {
      await h?.close();
      await fake?.close();
    });
    beforeEach(() => {
      fake.reset();
    });

    const spentMicro = async (user: string) =>
      Math.round((await h.app.get(BudgetService).status(user))[0].spent_usd * 1e6);

    it('successes, upstream errors, timeouts, a client that disconnects mid-stream and a cut stream', async () => {
      const chat = (max_tokens: number) =>
        request(h.server)
          .post('/chat')
          .set(auth())
          .send({ ...userMessage('count the words'), max_tokens });
      expect((await chat(20)).status).toBe(200);
      expect((await chat(7)).status).toBe(200);

      fake.fault({ path: '/v1/chat/completions', status: 500, times: 1 });
      expect((await chat(20)).status).toBe(502);

      fake.fault({ path: '/v1/chat/completions', hang: true, times: 1 });
      const timedOut = await chat(20);
      expect(timedOut.status).toBe(504);

      const aborted = `abort-${platform}`;
      await streamAndDisconnect(h.server, 'alice-token', aborted, {
        ...userMessage('stream a lot'),
        max_tokens: 300,
      });
      const abortedLine = await waitFor('the disconnected stream to be accounted', () =>
        h.logger.records('openai call').find((l) => l.request_id === aborted),
      );
      expect(abortedLine).toMatchObject({ status: 'incomplete', usage_estimated: true, user: 'alice' });
      expect(abortedLine.completion_tokens as number).toBeGreaterThan(0);
      expect(abortedLine.completion_tokens as number).toBeLessThan(300);

      fake.fault({ path: '/v1/chat/completions', streamCutAfterChunks: 4, times: 1 });
      const cut = await request(h.server)
        .post('/chat/stream')
        .set(auth())
        .send({ ...userMessage('stream'), max_tokens: 50 })
        .buffer(true)
        .parse(sseText);
      expect(JSON.parse(sseEvents(cut.body as string).at(-1)!).error).toMatchObject({ statusCode: 502 });

      const full = await request(h.server)
        .post('/chat/stream')
        .set(auth())
        .send({ ...userMessage('stream'), max_tokens: 6 })
        .buffer(true)
        .parse(sseText);
      expect(sseEvents(full.body as string).at(-1)).toBe('[DONE]');
      expect((await chat(3)).status).toBe(200);

      const lines = h.logger
        .records('openai call')
        .filter((l) => l.user === 'alice' && l.endpoint === 'chat.completions');
      expect(lines.map((l) => l.status)).toEqual(['ok', 'ok', 'incomplete', 'incomplete', 'ok', 'ok']);
      const costs = lines.map((l) => l.cost_usd as number);
      for (const c of costs) expect(c).toBeGreaterThan(0);
      // every hold ended: what the budget counts is the real spend, each call rounded up to the next micro-USD
      expect(await spentMicro('alice')).toBe(costs.reduce((n, c) => n + micro(c), 0));
      await h.app.get(UsageService).flush();
      const usage = (await request(h.server).get('/usage').set(auth())).body;
      expect(usage.requests).toBe(6);
      expect(usage.cost_usd).toBeCloseTo(
        costs.reduce((a, b) => a + b, 0),
        9,
      );
      expect(Math.round(usage.budget.remaining_usd * 1e6)).toBe(1_000_000 - (await spentMicro('alice')));
    });

    it('an upstream that fails every time leaves the budget untouched', async () => {
      fake.fault({ path: '/v1/chat/completions', status: 503 });
      for (let i = 0; i < 3; i++)
        expect(
          (await request(h.server).post('/chat').set(auth('bob-token')).send(userMessage('x'))).status,
        ).toBe(502);
      expect(await spentMicro('bob')).toBe(0);
    });

    it('a model without a price: 400 model_unpriced and no upstream call, while a budget applies', async () => {
      const res = await request(h.server)
        .post('/chat')
        .set(auth('bob-token'))
        .send({ ...userMessage('x'), model: 'acme-llm-1' });
      expect(res.status).toBe(400);
      expect(res.body).toMatchObject({ statusCode: 400, error: 'model_unpriced' });
      expect(res.body.request_id).toBe(res.headers['x-request-id']);
      const stream = await request(h.server)
        .post('/chat/stream')
        .set(auth('bob-token'))
        .send({ ...userMessage('x'), model: 'acme-llm-1' });
      expect(stream.status).toBe(400);
      expect(stream.body.error).toBe('model_unpriced');
      expect(fake.requests).toHaveLength(0);
    });
  },
);

// ---- the project budget, across users ----------------------------------------------------------------

const MODEL = 'gpt-4o-mini-2024-07-18';

@Controller()
class PerUserChatController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat(@Body() body: ChatRequest, @Headers('x-user') user: string) {
    const r = await this.openai.chat(body, { user });
    return { cost_usd: r.costUsd, usage: r.usage };
  }
}

describe.each(PLATFORMS)('the project budget applies across users on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  const messages = [{ role: 'user' as const, content: 'hello there' }];
  const prompt = countChatPromptTokens(messages);
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ reply: () => LONG_REPLY });
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        // 1 USD per 1M tokens: every call below costs exactly 100 micro-USD
        pricing: { models: { [MODEL]: { input: 1, output: 1 } } },
        budgets: { project: { dailyUsd: 0.0005 }, user: { dailyUsd: 1 } },
        retry: { maxRetries: 0 },
      }),
      { controllers: [PerUserChatController] },
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });

  it('ten users at once: five calls fit the project budget, five get 429 with scope project', async () => {
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        request(h.server)
          .post('/chat')
          .set('x-user', `user-${i}`)
          .send({ messages, max_tokens: 100 - prompt }),
      ),
    );
    const ok = results.filter((r) => r.status === 200);
    const refused = results.filter((r) => r.status === 429);
    expect(ok).toHaveLength(5);
    expect(refused).toHaveLength(5);
    for (const r of ok) expect(r.body.cost_usd).toBeCloseTo(100e-6, 12);
    for (const r of refused) {
      expect(r.body).toMatchObject({
        error: 'budget_exceeded',
        scope: 'project',
        period: 'day',
        limit_usd: 0.0005,
      });
      expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    }
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(5);
    const budgets = h.app.get(BudgetService);
    const [project] = await budgets.status(null);
    expect(Math.round(project.spent_usd * 1e6)).toBe(500);
    expect(project.remaining_usd).toBe(0);
    // each user budget holds only that user's call; a refused user holds nothing
    const perUser = await Promise.all(
      results.map(async (_, i) => Math.round((await budgets.status(`user-${i}`))[0].spent_usd * 1e6)),
    );
    expect(perUser.sort((x, y) => x - y)).toEqual([0, 0, 0, 0, 0, 100, 100, 100, 100, 100]);
    await h.app.get(UsageService).flush();
    const ledger = await h.app.get(UsageService).totals(null);
    expect(ledger.requests).toBe(5);
    expect(ledger.cost_usd).toBeCloseTo(0.0005, 12);
  });
});
