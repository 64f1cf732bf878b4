import 'reflect-metadata';
import {
  BadRequestException,
  Body,
  Controller,
  ForbiddenException,
  HttpCode,
  Injectable,
  Post,
  Req,
  Res,
  UseGuards,
  type CanActivate,
  type ExecutionContext,
  type PipeTransform,
} from '@nestjs/common';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  OpenAIService,
  RequestContextStore,
  clientAbortSignal,
  rawResponse,
  sendChatStreamAsSse,
} from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  sseEvents,
  sseText,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

type SeenRequest = { seenByGuard?: string; headers: Record<string, string | undefined> };

/** Reads the request ID from the AsyncLocalStorage context, sets the user, and refuses `x-deny: 1`. */
@Injectable()
class ContextReadingGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const req = context.switchToHttp().getRequest<SeenRequest>();
    const ctx = RequestContextStore.get();
    req.seenByGuard = ctx?.requestId ?? 'none';
    if (ctx) ctx.user = 'alice';
    if (req.headers['x-deny'] === '1') throw new ForbiddenException('denied by the test guard');
    return true;
  }
}

interface Body_ {
  messages: Array<{ role: 'user'; content: string }>;
  seenByPipe?: string;
  reject?: boolean;
}

/** Reads the request ID from the AsyncLocalStorage context; refuses `{ reject: true }` with a 400. */
@Injectable()
class ContextReadingPipe implements PipeTransform<Body_, Body_> {
  transform(value: Body_): Body_ {
    if (value?.reject) throw new BadRequestException('rejected by the test pipe');
    return { ...value, seenByPipe: RequestContextStore.get()?.requestId ?? 'none' };
  }
}

@Controller()
@UseGuards(ContextReadingGuard)
class RequestIdController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat(
    @Body(ContextReadingPipe) body: Body_,
    @Req() req: SeenRequest,
    @Res({ passthrough: true }) res: unknown,
  ) {
    const r = await this.openai.chat({ messages: body.messages }, { signal: clientAbortSignal(res) });
    return {
      guard: req.seenByGuard,
      pipe: body.seenByPipe,
      handler: RequestContextStore.get()?.requestId ?? 'none',
      openai_request_id: r.openaiRequestId,
    };
  }

  @Post('chat/stream')
  async stream(@Body(ContextReadingPipe) body: Body_, @Res() res: { hijack?: () => void }) {
    const stream = await this.openai.stream({ messages: body.messages }, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendChatStreamAsSse(stream, rawResponse(res));
  }
}

const msg = (content: string): Body_ => ({ messages: [{ role: 'user', content }] });

describe.each(PLATFORMS)(
  'request IDs through guards, pipes, the service, the log and errors on %s',
  (platform) => {
    let fake: FakeOpenAIServer;
    let h: FixtureHandle;
    beforeAll(async () => {
      fake = await FakeOpenAIServer.start();
      h = await startFixtureApp(
        platform,
        fixtureOptions(fake.baseURL, TEST_API_KEY, { retry: { maxRetries: 1 } }),
        {
          controllers: [RequestIdController],
          providers: [ContextReadingGuard, ContextReadingPipe],
        },
      );
    });
    afterAll(async () => {
      await h?.close();
      await fake?.close();
    });
    beforeEach(() => {
      fake.reset();
      h.logger.lines.length = 0;
    });

    it('the guard, the pipe, the handler, the call log line and the response header see the inbound ID', async () => {
      const id = `rid-${platform}-ok_1.a`;
      const res = await request(h.server).post('/chat').set('x-request-id', id).send(msg('hello'));
      expect(res.status).toBe(200);
      expect(res.headers['x-request-id']).toBe(id);
      expect(res.body).toMatchObject({ guard: id, pipe: id, handler: id });
      const upstream = fake.requestsTo('/v1/chat/completions');
      expect(upstream).toHaveLength(1);
      expect(res.body.openai_request_id).toBe(upstream[0].requestId);
      const lines = h.logger.records('openai call');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({
        request_id: id,
        openai_request_id: upstream[0].requestId,
        user: 'alice',
        status: 'ok',
      });
    });

    it('concurrent requests each keep their own ID', async () => {
      const ids = Array.from({ length: 12 }, (_, i) => `rid-${platform}-concurrent-${i}`);
      const results = await Promise.all(
        ids.map((id) =>
          request(h.server)
            .post('/chat')
            .set('x-request-id', id)
            .send(msg(`n ${id}`)),
        ),
      );
      results.forEach((res, i) => {
        expect(res.status).toBe(200);
        expect(res.headers['x-request-id']).toBe(ids[i]);
        expect(res.body).toMatchObject({ guard: ids[i], pipe: ids[i], handler: ids[i] });
      });
      const logged = h.logger.records('openai call').map((l) => l.request_id);
      const byText = (a: string, b: string) => a.localeCompare(b);
      expect(logged.map(String).sort(byText)).toEqual([...ids].sort(byText));
      // each log line names the upstream request its own call made
      for (const line of h.logger.records('openai call')) {
        const res = results[ids.indexOf(line.request_id as string)];
        expect(line.openai_request_id).toBe(res.body.openai_request_id);
      }
    });

    it('an upstream 500: the 502 body, its header and the `openai call failed` log line carry the inbound ID', async () => {
      fake.fault({ path: '/v1/chat/completions', status: 500 });
      const id = `rid-${platform}-upstream-500`;
      const res = await request(h.server).post('/chat').set('x-request-id', id).send(msg('fail please'));
      expect(res.status).toBe(502);
      expect(res.headers['x-request-id']).toBe(id);
      expect(res.body).toMatchObject({ statusCode: 502, error: 'upstream_error', request_id: id });
      expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(2);
      const failed = h.logger.records('openai call failed');
      expect(failed).toHaveLength(1);
      expect(failed[0]).toMatchObject({ request_id: id, user: 'alice', status: 502, upstream_status: 500 });
      expect(failed[0].openai_request_id).toBe(fake.requestsTo('/v1/chat/completions')[1].requestId);
      const attempts = h.logger.records('openai attempt failed');
      expect(attempts.length).toBeGreaterThanOrEqual(1);
      for (const a of attempts) expect(a.request_id).toBe(id);
      expect(h.logger.records('openai call')).toHaveLength(0);
    });

    it('errors from the guard and from the pipe carry the inbound ID too', async () => {
      const denied = await request(h.server)
        .post('/chat')
        .set('x-request-id', 'rid-guard-403')
        .set('x-deny', '1')
        .send(msg('x'));
      expect(denied.status).toBe(403);
      expect(denied.headers['x-request-id']).toBe('rid-guard-403');
      expect(denied.body).toMatchObject({ statusCode: 403, request_id: 'rid-guard-403' });
      const rejected = await request(h.server)
        .post('/chat')
        .set('x-request-id', 'rid-pipe-400')
        .send({ ...msg('x'), reject: true });
      expect(rejected.status).toBe(400);
      expect(rejected.headers['x-request-id']).toBe('rid-pipe-400');
      expect(rejected.body).toMatchObject({ statusCode: 400, request_id: 'rid-pipe-400' });
      expect(fake.requests).toHaveLength(0);
    });

    it('keeps a sane ID of exactly 128 characters', async () => {
      const id = `${'a'.repeat(60)}.${'B'.repeat(60)}_-${'9'.repeat(5)}`;
      expect(id).toHaveLength(128);
      const res = await request(h.server).post('/chat').set('x-request-id', id).send(msg('x'));
      expect(res.headers['x-request-id']).toBe(id);
      expect(res.body.handler).toBe(id);
    });

    it.each([
      ['spaces', 'bad id with spaces'],
      ['129 characters', 'a'.repeat(129)],
      ['unicode', 'ünïcödé-id'],
      ['a slash and a quote', 'a/b"c'],
      ['an empty value', ''],
    ])('replaces an inbound ID with %s by one fresh UUID, used everywhere', async (_what, bad) => {
      const res = await request(h.server).post('/chat').set('x-request-id', bad).send(msg('x'));
      expect(res.status).toBe(200);
      const id = res.headers['x-request-id'];
      expect(id).toMatch(UUID);
      expect(res.body).toMatchObject({ guard: id, pipe: id, handler: id });
      expect(h.logger.records('openai call')[0].request_id).toBe(id);
      expect(h.logger.text()).not.toContain(bad || '\u0000');
    });

    it('gives a fresh UUID when there is no inbound ID, a different one per request', async () => {
      const a = await request(h.server).post('/chat').send(msg('x'));
      const b = await request(h.server).post('/chat').send(msg('x'));
      expect(a.headers['x-request-id']).toMatch(UUID);
      expect(b.headers['x-request-id']).toMatch(UUID);
      expect(a.headers['x-request-id']).not.toBe(b.headers['x-request-id']);
      expect(a.body.handler).toBe(a.headers['x-request-id']);
    });

    it('a stream: the header and the call log line carry the inbound ID', async () => {
      const id = `rid-${platform}-stream`;
      const res = await request(h.server)
        .post('/chat/stream')
        .set('x-request-id', id)
        .send(msg('one two three'))
        .buffer(true)
        .parse(sseText);
      expect(res.status).toBe(200);
      expect(res.headers['x-request-id']).toBe(id);
      expect(sseEvents(res.body as string).at(-1)).toBe('[DONE]');
      const lines = h.logger.records('openai call');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({
        request_id: id,
        status: 'ok',
        user: 'alice',
        openai_request_id: fake.requestsTo('/v1/chat/completions')[0].requestId,
      });
    });

    it('a stream cut by the upstream: the error event and the `incomplete` log line carry the inbound ID', async () => {
      fake.fault({ path: '/v1/chat/completions', streamCutAfterChunks: 2 });
      const id = `rid-${platform}-stream-cut`;
      const res = await request(h.server)
        .post('/chat/stream')
        .set('x-request-id', id)
        .send(msg('a much longer sentence so that the cut happens before the end'))
        .buffer(true)
        .parse(sseText);
      const events = sseEvents(res.body as string);
      const last = JSON.parse(events.at(-1)!);
      expect(last.error).toMatchObject({ statusCode: 502, request_id: id });
      expect(h.logger.records('openai call')).toEqual([
        expect.objectContaining({ request_id: id, status: 'incomplete' }),
      ]);
    });
  },
);

describe.each(PLATFORMS)('request IDs in the sample app on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake, { OPENAI_MAX_RETRIES: '0' });
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
    h.logger.lines.length = 0;
  });

  it('POST /chat/stream: the call log line carries the inbound ID', async () => {
    const id = `sample-${platform}-stream-1`;
    const res = await request(h.server)
      .post('/chat/stream')
      .set(auth())
      .set('x-request-id', id)
      .send(userMessage('count to three'))
      .buffer(true)
      .parse(sseText);
    expect(res.status).toBe(200);
    expect(res.headers['x-request-id']).toBe(id);
    // one line per upstream call (input moderation, then the chat), each with the inbound ID
    const lines = h.logger.records('openai call');
    expect(lines).toHaveLength(fake.requests.length);
    for (const line of lines)
      expect(line).toMatchObject({ request_id: id, user: 'alice', route: 'POST /chat/stream', status: 'ok' });
    expect(lines.filter((l) => l.endpoint === 'chat.completions')).toEqual([
      expect.objectContaining({ openai_request_id: fake.requestsTo('/v1/chat/completions')[0].requestId }),
    ]);
  });

  it('an upstream 500 on POST /chat: 502 body, header and failure log line carry the inbound ID', async () => {
    fake.fault({ path: '/v1/chat/completions', status: 500 });
    const id = `sample-${platform}-500`;
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', id)
      .send(userMessage('x'));
    expect(res.status).toBe(502);
    expect(res.headers['x-request-id']).toBe(id);
    expect(res.body.request_id).toBe(id);
    expect(h.logger.records('openai call failed')).toEqual([
      expect.objectContaining({ request_id: id, user: 'alice', route: 'POST /chat' }),
    ]);
  });

  it('401 from the auth guard and 400 from the body pipe carry the inbound ID', async () => {
    const r401 = await request(h.server)
      .post('/chat')
      .set('x-request-id', 'sample-401')
      .send(userMessage('x'));
    expect(r401.status).toBe(401);
    expect(r401.headers['x-request-id']).toBe('sample-401');
    expect(r401.body.request_id).toBe('sample-401');
    const r400 = await request(h.server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', 'sample-400')
      .send({ messages: [] });
    expect(r400.status).toBe(400);
    expect(r400.headers['x-request-id']).toBe('sample-400');
    expect(r400.body.request_id).toBe('sample-400');
  });
});
