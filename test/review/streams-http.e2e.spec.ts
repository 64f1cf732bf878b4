/**
 * Review of the stream changes (c04c71c, b7b98d3) over HTTP: real Nest apps on Express and Fastify relaying
 * chat and Responses streams as SSE (`sendChatStreamAsSse` / `sendResponseStreamAsSse` with
 * `clientAbortSignal`), the real `openai` SDK talking to `FakeOpenAIServer` through a TCP tap that shows
 * whether the upstream connection was cancelled.
 */
import 'reflect-metadata';
import { Body, Controller, Post, Res } from '@nestjs/common';
import { request as httpRequest } from 'node:http';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  OpenAIMetricsService,
  OpenAIService,
  clientAbortSignal,
  rawResponse,
  sendResponseStreamAsSse,
  type ResponseRequest,
} from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  FixtureController,
  fixtureOptions,
  sseEvents,
  sseText,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { RecordingHook } from '../support/recording-hook.js';
import { TcpTap, until, upstreamErrors } from '../support/tcp-tap.js';
import { PLATFORMS, TEST_API_KEY } from '../support/sample-app.js';

const CHAT = '/v1/chat/completions';
const RESPONSES = '/v1/responses';
const PROMPT = 'one two three four five six seven eight';

@Controller()
class ResponsesStreamController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('responses/stream')
  async stream(@Body() body: ResponseRequest, @Res() res: { hijack?: () => void }) {
    const stream = await this.openai.streamResponse(body, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendResponseStreamAsSse(stream, rawResponse(res));
  }
}

/**
 * POSTs `body` to the listening app and destroys the connection once `cutWhen` holds for the bytes
 * received (or right after the request is sent when `cutWhen` is undefined). Resolves with what arrived.
 */
function postThenDisconnect(
  port: number,
  path: string,
  body: unknown,
  cutWhen?: (received: string) => boolean,
  afterMs = 0,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    let received = '';
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        res.on('data', (c: Buffer) => {
          received += c.toString();
          if (cutWhen?.(received)) setTimeout(() => (req.destroy(), resolve(received)), afterMs);
        });
        res.on('error', () => undefined);
      },
    );
    req.on('error', (e) => (req.destroyed ? resolve(received) : reject(e)));
    req.end(payload);
    if (!cutWhen) setTimeout(() => (req.destroy(), resolve(received)), afterMs);
  });
}

const userMessage = (content = PROMPT) => ({ messages: [{ role: 'user', content }] });

describe.each(PLATFORMS)('stream relays over HTTP on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let tap: TcpTap;
  let h: FixtureHandle;
  let port: number;
  const hook = new RecordingHook();
  const metrics = async () => upstreamErrors(await h.app.get(OpenAIMetricsService).metrics());

  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ streamChunkDelayMs: 30 });
    tap = await new TcpTap(fake.port).start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(tap.baseURL, TEST_API_KEY, {
        timeouts: { attemptMs: 500, deadlineMs: 8_000 },
        retry: { maxRetries: 1 },
      }),
      { hooks: [hook], controllers: [FixtureController, ResponsesStreamController] },
    );
    await h.app.listen(0, '127.0.0.1');
    port = (h.app.getHttpServer().address() as { port: number }).port;
  });
  afterAll(async () => {
    await h?.close();
    await tap?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
    hook.clear();
  });

  async function sse(path: string, body: unknown, requestId: string) {
    const res = await request(h.server)
      .post(path)
      .set('x-request-id', requestId)
      .send(body as object)
      .buffer(true)
      .parse(sseText);
    const events = sseEvents(res.body as string);
    const errors = events.filter((e) => e.startsWith('{"error"')).map((e) => JSON.parse(e).error);
    return { res, events, errors };
  }

  const callLine = (requestId: string) =>
    h.logger.records('openai call').find((l) => l.request_id === requestId);

  it('a complete chat stream ends with usage then [DONE]; logged ok', async () => {
    const { res, events, errors } = await sse('/chat/stream', userMessage(), 'ok-1');
    expect(res.status).toBe(200);
    expect(errors).toEqual([]);
    expect(events.at(-1)).toBe('[DONE]');
    expect(callLine('ok-1')).toMatchObject({ status: 'ok' });
  });

  it('a chat stream without [DONE]: one 502 error event, logged incomplete', async () => {
    fake.fault({ path: CHAT, omitDone: true });
    const { events, errors } = await sse('/chat/stream', userMessage(), 'nodone-1');
    expect(errors).toEqual([expect.objectContaining({ statusCode: 502, request_id: 'nodone-1' })]);
    expect(events).not.toContain('[DONE]');
    expect(callLine('nodone-1')).toMatchObject({ status: 'incomplete', error: 'upstream_stream_incomplete' });
  });

  it('an idle stall mid-stream: one 504 error event, settled once, upstream cancelled', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 2 });
    const { errors } = await sse('/chat/stream', userMessage(), 'stall-1');
    expect(errors).toEqual([expect.objectContaining({ statusCode: 504, error: 'upstream_timeout' })]);
    expect(hook.settled).toHaveLength(1);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
    expect(callLine('stall-1')).toMatchObject({ status: 'incomplete', usage_estimated: true });
  });

  it('a stall before the headers: retried, then a JSON 504 (no SSE)', async () => {
    fake.fault({ path: CHAT, hang: true });
    const res = await request(h.server).post('/chat/stream').set('x-request-id', 'hdr-1').send(userMessage());
    expect(res.status).toBe(504);
    expect(res.body).toMatchObject({ error: 'upstream_timeout', request_id: 'hdr-1' });
    expect(fake.requestsTo(CHAT)).toHaveLength(2);
    expect(hook.released).toBe(1);
  });

  it('a Responses stream completes (no [DONE] watch on it) and one without response.completed is a 502', async () => {
    const ok = await sse('/responses/stream', { input: PROMPT }, 'resp-ok');
    expect(ok.errors).toEqual([]);
    expect(ok.events.at(-1)).toBe('[DONE]');
    fake.fault({ path: RESPONSES, omitDone: true });
    const cut = await sse('/responses/stream', { input: PROMPT }, 'resp-cut');
    expect(cut.errors).toEqual([expect.objectContaining({ statusCode: 502 })]);
  });

  it('client disconnects mid-stream (chat): upstream request cancelled, settled once, logged as a caller abort, no upstream error', async () => {
    fake.fault({ path: CHAT, streamStallAfterChunks: 3 });
    const before = await metrics();
    const got = await postThenDisconnect(
      port,
      '/chat/stream',
      userMessage(),
      (r) => r.includes('"delta"'),
      20,
    );
    expect(got).toContain('"delta"');
    expect(await until(() => hook.settled.length === 1)).toBe(true);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
    expect(tap.lastStream()!.clientClosedFirst).toBe(true);
    expect(hook.released).toBe(0);
    expect((await metrics()) - before).toBe(0);
    const line = h.logger.records('openai call').at(-1)!;
    expect(line).toMatchObject({ status: 'incomplete', usage_estimated: true });
    expect(line.error).toBeUndefined();
  });

  it('client disconnects mid-stream (Responses): upstream request cancelled, settled once, no upstream error', async () => {
    fake.fault({ path: RESPONSES, streamStallAfterChunks: 3 });
    const before = await metrics();
    await postThenDisconnect(port, '/responses/stream', { input: PROMPT }, (r) => r.includes('"delta"'), 20);
    expect(await until(() => hook.settled.length === 1)).toBe(true);
    expect(await until(() => tap.lastStream()?.closed === true)).toBe(true);
    expect((await metrics()) - before).toBe(0);
    expect(h.logger.records('openai call').at(-1)!.error).toBeUndefined();
  });

  it('client disconnects while the upstream has not answered: the upstream request is cancelled, released once', async () => {
    fake.fault({ path: CHAT, delayMs: 3_000 });
    const before = tap.conns.filter((c) => c.closed).length;
    const started = performance.now();
    await postThenDisconnect(port, '/chat/stream', userMessage(), undefined, 150);
    expect(await until(() => hook.released === 1)).toBe(true);
    expect(performance.now() - started).toBeLessThan(1_500);
    expect(hook.settled).toHaveLength(0);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    // The connection that carried the delayed request was closed by the SDK side.
    expect(await until(() => tap.conns.filter((c) => c.closed).length > before)).toBe(true);
  });

  it('the API key is in no SSE error event and no log line', async () => {
    fake.fault({ path: CHAT, streamCutAfterChunks: 1, times: 1 });
    const a = await sse('/chat/stream', userMessage(), 'key-1');
    expect(a.errors).toHaveLength(1);
    expect(JSON.stringify(a.events)).not.toContain(TEST_API_KEY);
    expect(h.logger.text()).not.toContain(TEST_API_KEY);
  });
});
