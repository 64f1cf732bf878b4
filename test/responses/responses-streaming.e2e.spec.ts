import http from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UsageService } from '../../lib/index.js';
import { FakeOpenAIServer, countTextTokens } from '../../lib/testing/index.js';
import { waitFor } from '../support/redis.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  sseEvents,
  sseText,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { RESPONSES, ResponsesFixtureController } from './responses-fixture.js';

const PROMPT = 'one two three four five';
const LONG = Array.from({ length: 80 }, (_, i) => `word${i}`).join(' ');

describe.each(PLATFORMS)('POST /responses/stream on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({
      reply: (req) => {
        const last = req.messages.at(-1) as { content?: unknown } | undefined;
        const text = typeof last?.content === 'string' ? last.content : '';
        return text.includes('SAY_BAD')
          ? `fine fine fine ${'x '.repeat(20)}FLAG_ME at the end`
          : `Echo: ${text}`;
      },
      streamChunkDelayMs: 5,
    });
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        timeouts: { attemptMs: 400, deadlineMs: 10_000 },
        retry: { maxRetries: 1 },
        moderation: { streamCheckIntervalChars: 20 },
      }),
      { controllers: [ResponsesFixtureController] },
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  async function stream(user: string, body: object, path = '/responses/stream') {
    const res = await request(h.server)
      .post(path)
      .set('x-user', user)
      .set('x-request-id', user)
      .send(body)
      .buffer(true)
      .parse(sseText);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/event-stream');
    const events = sseEvents(res.body as string);
    const deltas = events.filter((e) => e.startsWith('{"delta"')).map((e) => JSON.parse(e).delta as string);
    const errors = events.filter((e) => e.startsWith('{"error"')).map((e) => JSON.parse(e).error);
    return { events, deltas, text: deltas.join(''), errors };
  }
  const logLine = (user: string) =>
    waitFor(`the log line of ${user}`, () =>
      h.logger.records('openai call').find((l) => l.user === user && l.endpoint === 'responses'),
    );
  const ledger = async (user: string) => {
    const usage = h.app.get(UsageService);
    await usage.flush();
    return usage.totals(user);
  };

  it('a complete stream: deltas in order, then one usage event, then [DONE]; accounted with real usage', async () => {
    const user = `ok-${platform}`;
    const { events, deltas, text, errors } = await stream(user, { input: PROMPT });
    expect(errors).toEqual([]);
    expect(deltas.length).toBeGreaterThan(3);
    expect(text).toBe(`Echo: ${PROMPT}`);
    expect(events.at(-1)).toBe('[DONE]');
    const usage = JSON.parse(events.at(-2)!).usage;
    expect(usage.completion_tokens).toBe(countTextTokens(`Echo: ${PROMPT}`));
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens);
    // nothing but deltas before the usage event
    expect(events.slice(0, -2).every((e) => e.startsWith('{"delta"'))).toBe(true);
    const sent = fake.requestsTo(RESPONSES)[0].body;
    expect(sent.stream).toBe(true);
    expect(sent.store).toBe(false);
    const line = await logLine(user);
    expect(line).toMatchObject({ status: 'ok', prompt_tokens: usage.prompt_tokens });
    expect(line.usage_estimated).toBeUndefined();
    const totals = await ledger(user);
    expect(totals.requests).toBe(1);
    expect(totals.prompt_tokens).toBe(usage.prompt_tokens);
    expect(totals.completion_tokens).toBe(usage.completion_tokens);
  });

  it('a response.failed event: the deltas before it, one 502 error event, no [DONE]; accounted', async () => {
    const user = `failed-${platform}`;
    fake.fault({ path: RESPONSES, streamFailAfterChunks: 2 });
    const { events, text, errors } = await stream(user, { input: PROMPT });
    expect(text).toBe('Echo: one ');
    expect(errors).toEqual([
      { statusCode: 502, error: expect.any(String), message: expect.any(String), request_id: user },
    ]);
    expect(events.at(-1)).toMatch(/^\{"error"/);
    expect(events).not.toContain('[DONE]');
    expect(events.some((e) => e.includes('"usage"'))).toBe(false);
    expect(fake.requestsTo(RESPONSES)).toHaveLength(1);
    const line = await logLine(user);
    expect(line).toMatchObject({ status: 'incomplete', usage_estimated: true });
    expect(line.completion_tokens).toBeGreaterThan(0);
    const totals = await ledger(user);
    expect(totals.requests).toBe(1);
    expect(totals.completion_tokens).toBe(line.completion_tokens);
  });

  it('an error event: one 502 error event, no [DONE]; accounted from what was received', async () => {
    const user = `errev-${platform}`;
    fake.fault({ path: RESPONSES, streamErrorEventAfterChunks: 3, errorMessage: 'secret upstream detail' });
    const { events, text, errors } = await stream(user, { input: PROMPT });
    expect(text).toBe('Echo: one two ');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ statusCode: 502, request_id: user });
    expect(JSON.stringify(events)).not.toContain('secret upstream detail');
    expect(events).not.toContain('[DONE]');
    const line = await logLine(user);
    expect(line).toMatchObject({ status: 'incomplete', usage_estimated: true });
    expect((await ledger(user)).requests).toBe(1);
  });

  it('a cut connection: one 502 error event, no [DONE], not retried; accounted as estimated', async () => {
    const user = `cut-${platform}`;
    fake.fault({ path: RESPONSES, streamCutAfterChunks: 3 });
    const { events, text, errors } = await stream(user, { input: PROMPT });
    expect(text).toBe('Echo: one two ');
    expect(errors).toEqual([
      { statusCode: 502, error: expect.any(String), message: expect.any(String), request_id: user },
    ]);
    expect(events).not.toContain('[DONE]');
    expect(fake.requestsTo(RESPONSES)).toHaveLength(1);
    const line = await logLine(user);
    expect(line).toMatchObject({ status: 'incomplete', usage_estimated: true });
    expect(line.completion_tokens).toBe(countTextTokens('Echo: one two '));
  });

  it('a stall: one 504 error event after the idle timeout, no [DONE]; accounted', async () => {
    const user = `stall-${platform}`;
    fake.fault({ path: RESPONSES, streamStallAfterChunks: 2 });
    const started = performance.now();
    const { events, text, errors } = await stream(user, { input: PROMPT });
    const elapsed = performance.now() - started;
    expect(text).toBe('Echo: one ');
    expect(errors).toEqual([
      { statusCode: 504, error: 'upstream_timeout', message: expect.any(String), request_id: user },
    ]);
    expect(events).not.toContain('[DONE]');
    expect(elapsed).toBeGreaterThanOrEqual(350);
    expect(elapsed).toBeLessThan(5_000);
    expect(fake.requestsTo(RESPONSES)).toHaveLength(1);
    const line = await logLine(user);
    expect(line).toMatchObject({ status: 'incomplete', usage_estimated: true });
    expect((await ledger(user)).requests).toBe(1);
  });

  it('a stream without usage: completes with [DONE], its usage estimated', async () => {
    const user = `nousage-${platform}`;
    fake.fault({ path: RESPONSES, omitUsage: true });
    const { events, errors } = await stream(user, { input: PROMPT });
    expect(errors).toEqual([]);
    expect(events.at(-1)).toBe('[DONE]');
    const usage = JSON.parse(events.at(-2)!).usage;
    expect(usage.prompt_tokens).toBeGreaterThan(0);
    expect(usage.completion_tokens).toBe(countTextTokens(`Echo: ${PROMPT}`));
    const line = await logLine(user);
    expect(line).toMatchObject({ status: 'ok', usage_estimated: true });
  });

  it('a stream without its terminal event is an error: one 502 error event, no [DONE]', async () => {
    const user = `noterm-${platform}`;
    fake.fault({ path: RESPONSES, omitDone: true });
    const { events, text, errors } = await stream(user, { input: PROMPT });
    expect(text).toBe(`Echo: ${PROMPT}`);
    expect(errors).toHaveLength(1);
    expect(errors[0].statusCode).toBe(502);
    expect(events).not.toContain('[DONE]');
    expect(await logLine(user)).toMatchObject({ status: 'incomplete' });
  });

  it('output moderation: a stream whose text becomes flagged ends with one output_flagged error event', async () => {
    const user = `modout-${platform}`;
    const { events, text, errors } = await stream(
      user,
      { input: 'SAY_BAD please' },
      '/responses/stream/output-moderated',
    );
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ statusCode: 422, error: 'output_flagged', request_id: user });
    expect(events).not.toContain('[DONE]');
    expect(text).not.toContain('FLAG_ME');
    const clean = await stream(`${user}-clean`, { input: PROMPT }, '/responses/stream/output-moderated');
    expect(clean.errors).toEqual([]);
    expect(clean.events.at(-1)).toBe('[DONE]');
  });

  it('a client that disconnects mid-stream cancels the upstream and what was received is accounted', async () => {
    const user = `abort-${platform}`;
    const server = h.server as http.Server;
    if (!server.address()) await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const { port } = server.address() as AddressInfo;
    const received = await new Promise<string>((resolve, reject) => {
      const req = http.request(
        {
          host: '127.0.0.1',
          port,
          path: '/responses/stream',
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-user': user },
        },
        (res) => {
          let data = '';
          res.on('data', (c: Buffer) => {
            data += c.toString();
            if ((data.match(/"delta"/g) ?? []).length >= 3) {
              req.destroy();
              resolve(data);
            }
          });
          res.on('error', () => undefined);
          res.on('end', () => reject(new Error(`the stream ended before the client left: ${data}`)));
        },
      );
      req.on('error', () => undefined);
      req.end(JSON.stringify({ input: LONG, max_output_tokens: 150 }));
    });
    expect(received).not.toContain('[DONE]');
    const line = await logLine(user);
    expect(line.status).toBe('incomplete');
    expect(line.completion_tokens).toBeGreaterThanOrEqual(1);
    expect(line.completion_tokens).toBeLessThan(countTextTokens(`Echo: ${LONG}`));
    const totals = await ledger(user);
    expect(totals.requests).toBe(1);
    expect(totals.completion_tokens).toBe(line.completion_tokens);
  });
});
