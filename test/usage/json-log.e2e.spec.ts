import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { createSampleApp } from '../../sample/bootstrap.js';
import { readSampleConfig } from '../../sample/sample.config.js';
import { sseEvents, sseText } from '../support/fixture-app.js';
import { PLATFORMS, TEST_API_KEY, auth, userMessage } from '../support/sample-app.js';

const SECRET_PROMPT = 'PROMPT-SECRET-zebra-42 my card is 4111 1111 1111 1111';
const byText = (a: string, b: string) => a.localeCompare(b);
const CONTRACT_FIELDS = [
  'request_id',
  'openai_request_id',
  'user',
  'model',
  'status',
  'latency_ms',
  'prompt_tokens',
  'completion_tokens',
  'cost_usd',
  'retries',
];

describe.each(PLATFORMS)('LOG_FORMAT=json in the sample app on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let app: INestApplication;
  const out: string[] = [];
  let write: { mockRestore(): void };

  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    // JsonLogger writes one JSON object a line to stdout: capture what it writes.
    write = vi.spyOn(process.stdout, 'write').mockImplementation(((chunk: string | Uint8Array) => {
      out.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      return true;
    }) as typeof process.stdout.write);
    const config = readSampleConfig(
      {
        NODE_ENV: 'development',
        SAMPLE_PLATFORM: platform,
        LOG_FORMAT: 'json',
        OPENAI_MAX_RETRIES: '2',
        RATE_LIMIT_RPM: '100',
      },
      { apiKey: TEST_API_KEY, baseURL: fake.baseURL },
    );
    app = await createSampleApp(config);
    await app.init();
    if (platform === 'fastify') await (app as NestFastifyApplication).getHttpAdapter().getInstance().ready();
  });
  afterAll(async () => {
    await app?.close();
    write?.mockRestore();
    await fake?.close();
  });

  const lines = () =>
    out
      .join('')
      .split('\n')
      .filter((l) => l.trim() !== '');
  const records = () => lines().map((l) => JSON.parse(l) as Record<string, unknown>);

  it('one JSON line per upstream call with the contract fields; never the key, never the prompt', async () => {
    const server = app.getHttpServer();
    const first = await request(server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', 'json-1')
      .send(userMessage(SECRET_PROMPT));
    expect(first.status).toBe(200);

    fake.fault({ path: '/v1/chat/completions', status: 500, times: 1, retryAfterMs: 5 });
    const retried = await request(server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', 'json-2')
      .send(userMessage(SECRET_PROMPT));
    expect(retried.status).toBe(200);

    const streamed = await request(server)
      .post('/chat/stream')
      .set(auth())
      .set('x-request-id', 'json-3')
      .send(userMessage(SECRET_PROMPT))
      .buffer(true)
      .parse(sseText);
    expect(sseEvents(streamed.body as string).at(-1)).toBe('[DONE]');

    fake.fault({ path: '/v1/chat/completions', status: 500, times: 3, retryAfterMs: 5 });
    const failed = await request(server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', 'json-4')
      .send(userMessage(SECRET_PROMPT));
    expect(failed.status).toBe(502);

    // every line is one JSON object
    const notJson = lines().filter((l) => {
      try {
        JSON.parse(l);
        return false;
      } catch {
        return true;
      }
    });
    expect(notJson).toEqual([]);
    const all = records();
    for (const r of all) expect(r).toMatchObject({ time: expect.any(String), level: expect.any(String) });

    // one `openai call` line per call the upstream answered (input moderation and chat), none per failed attempt
    const calls = all.filter((r) => r.msg === 'openai call');
    const answered = fake.requests.filter((r) => !r.fault);
    expect(calls).toHaveLength(answered.length);
    expect(calls.map((c) => String(c.openai_request_id)).sort(byText)).toEqual(
      answered.map((r) => r.requestId).sort(byText),
    );
    for (const c of calls) {
      expect(CONTRACT_FIELDS.filter((f) => !(f in c))).toEqual([]);
      expect(c).toMatchObject({ user: 'alice', status: 'ok', context: 'OpenAI' });
      expect(['json-1', 'json-2', 'json-3']).toContain(c.request_id);
      expect(typeof c.latency_ms).toBe('number');
      expect(c.latency_ms as number).toBeGreaterThanOrEqual(0);
      const numeric = ['prompt_tokens', 'completion_tokens', 'cost_usd', 'retries'];
      expect(numeric.map((f) => typeof c[f])).toEqual(numeric.map(() => 'number'));
    }
    const chats = calls.filter((c) => c.endpoint === 'chat.completions');
    expect(chats.map((c) => [c.request_id, c.retries])).toEqual([
      ['json-1', 0],
      ['json-2', 1],
      ['json-3', 0],
    ]);
    expect(chats[0]).toMatchObject({
      model: 'gpt-4o-mini-2024-07-18',
      prompt_tokens: first.body.usage.prompt_tokens,
      completion_tokens: first.body.usage.completion_tokens,
      openai_request_id: first.body.openai_request_id,
    });
    expect(chats[0].cost_usd).toBeCloseTo(first.body.cost_usd, 12);

    // the failed call: one line with its IDs, status and retries
    const failures = all.filter((r) => r.msg === 'openai call failed');
    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatchObject({
      request_id: 'json-4',
      user: 'alice',
      model: 'gpt-4o-mini-2024-07-18',
      status: 502,
      retries: 2,
    });
    expect(failures[0].openai_request_id).toBe(fake.requestsTo('/v1/chat/completions').at(-1)!.requestId);
    expect(typeof failures[0].latency_ms).toBe('number');

    // never the key, never the prompt or the completion (prompt logging is off by default)
    const text = out.join('');
    expect(text).not.toContain(TEST_API_KEY);
    expect(text).not.toContain(TEST_API_KEY.slice(3, 20));
    expect(text).not.toContain('PROMPT-SECRET');
    // The card number whole: '4111' alone may occur in a random hex request ID.
    expect(text).not.toContain('4111 1111 1111 1111');
    expect(text).not.toContain('zebra');
  });
});
