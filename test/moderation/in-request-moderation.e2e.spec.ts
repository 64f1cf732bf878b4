import 'reflect-metadata';
import { Body, Controller, HttpCode, Post, Res } from '@nestjs/common';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  Moderate,
  OpenAIService,
  clientAbortSignal,
  rawResponse,
  sendChatStreamAsSse,
  type ChatRequest,
  type ResponseRequest,
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

const SAFE = 'Sorry, I can not show that.';

/** Output moderation in-request: the verdict comes with the reply (`moderation: { model }` in the request). */
@Controller()
@Moderate({ output: { via: 'in-request' } })
class InRequestController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat(@Body() body: ChatRequest) {
    const r = await this.openai.chat(body);
    return { content: r.content, output_moderation: r.outputModeration };
  }

  @Post('responses')
  @HttpCode(200)
  async responses(@Body() body: ResponseRequest) {
    const r = await this.openai.createResponse(body);
    return { output_text: r.outputText, output_moderation: r.outputModeration };
  }

  @Post('chat/stream')
  async chatStream(@Body() body: ChatRequest, @Res() res: { hijack?: () => void }) {
    const stream = await this.openai.stream(body, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendChatStreamAsSse(stream, rawResponse(res));
  }

  @Post('responses/stream')
  async responsesStream(@Body() body: ResponseRequest, @Res() res: { hijack?: () => void }) {
    const stream = await this.openai.streamResponse(body, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendChatStreamAsSse(stream, rawResponse(res));
  }
}

const chat = (text: string) => ({ messages: [{ role: 'user', content: text }] });

describe.each(PLATFORMS)('in-request output moderation on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, { moderation: { safeMessage: SAFE, cacheTtlMs: 0 } }),
      { controllers: [InRequestController] },
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('chat: the request asks for moderation, the verdict comes back with it, no extra round trip', async () => {
    const clean = await request(h.server).post('/chat').send(chat('hello there'));
    expect(clean.status).toBe(200);
    expect(clean.body).toMatchObject({ content: 'Echo: hello there', output_moderation: { flagged: false } });
    const flagged = await request(h.server).post('/chat').send(chat('say FLAG_ME'));
    expect(flagged.body).toMatchObject({
      content: SAFE,
      output_moderation: { flagged: true, categories: ['harassment'] },
    });
    const sent = fake.requestsTo('/v1/chat/completions');
    expect(sent.map((r) => r.body.moderation)).toEqual([
      { model: 'omni-moderation-latest' },
      { model: 'omni-moderation-latest' },
    ]);
    expect(fake.requestsTo('/v1/moderations')).toHaveLength(0);
  });

  it('responses: the same, on output_text', async () => {
    const res = await request(h.server).post('/responses').send({ input: 'say FLAG_ME' });
    expect(res.body).toMatchObject({ output_text: SAFE, output_moderation: { flagged: true } });
    expect(fake.requestsTo('/v1/responses')[0].body.moderation).toEqual({ model: 'omni-moderation-latest' });
    expect(fake.requestsTo('/v1/moderations')).toHaveLength(0);
  });

  it('an in-request error result falls back to the moderations endpoint', async () => {
    fake.fault({ path: '/v1/chat/completions', moderationError: true });
    const res = await request(h.server).post('/chat').send(chat('say FLAG_ME'));
    expect(res.body).toMatchObject({ content: SAFE, output_moderation: { flagged: true } });
    expect(fake.requestsTo('/v1/moderations')).toHaveLength(1);
  });

  it.each([
    ['chat', '/chat/stream', chat('please FLAG_ME now')],
    ['responses', '/responses/stream', { input: 'please FLAG_ME now' }],
  ])(
    '%s stream: judged at the end from the upstream verdict, ends with output_flagged',
    async (_n, path, body) => {
      const res = await request(h.server).post(path).send(body).buffer(true).parse(sseText);
      const events = sseEvents(res.body as string);
      expect(events).not.toContain('[DONE]');
      expect(JSON.parse(events.at(-1)!).error).toMatchObject({ statusCode: 422, error: 'output_flagged' });
      expect(fake.requestsTo('/v1/moderations')).toHaveLength(0);
    },
  );

  it('a clean stream completes with [DONE] and no moderations call', async () => {
    const res = await request(h.server)
      .post('/responses/stream')
      .send({ input: 'all fine here' })
      .buffer(true)
      .parse(sseText);
    expect(sseEvents(res.body as string).at(-1)).toBe('[DONE]');
    expect(fake.requestsTo('/v1/moderations')).toHaveLength(0);
  });
});
