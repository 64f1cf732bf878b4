import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OpenAIMetricsService, type ChatStream } from '../../lib/index.js';
import { FakeOpenAIServer, defaultReply, type FakeChatRequest } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';
import { ModerationFixtureController, sseEvents, sseParser } from './moderation-fixture.js';

const MODERATIONS = '/v1/moderations';
const SAFE = "Sorry, I can't help with that.";

/** Long completions: the trigger early, then far more text than one check interval. */
const LONG_TAIL = Array.from({ length: 150 }, (_, i) => `tail${i}`).join(' ');
const FLAGGED_EARLY = `Well FLAG_ME indeed. ${LONG_TAIL}`;
const CLEAN_LONG = `All good here. ${LONG_TAIL}`;

/** The completion depends on the last user message, so one fake serves clean and flagged replies. */
function reply(req: FakeChatRequest): string {
  const last = JSON.stringify(req.messages.at(-1));
  if (last.includes('say something bad')) return 'Here you go: FLAG_ME and more';
  if (last.includes('say something violent')) return 'Here you go: HIT_HIM';
  if (last.includes('long bad')) return FLAGGED_EARLY;
  if (last.includes('long clean')) return CLEAN_LONG;
  return defaultReply(req);
}

const triggers = { FLAG_ME: ['harassment'], HIT_HIM: ['violence'] };

describe.each(PLATFORMS)('output moderation on the sample app (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ reply, moderationTriggers: triggers });
    h = await startSampleApp(platform, fake);
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  it('POST /chat/moderated replaces a flagged completion by the safe message and marks it', async () => {
    const res = await request(h.server)
      .post('/chat/moderated')
      .set(auth())
      .send(userMessage('please say something bad'));
    expect(res.status).toBe(200);
    expect(res.body.content).toBe(SAFE);
    expect(res.body.output_moderation).toEqual({ flagged: true, categories: ['harassment'] });
    expect(JSON.stringify(res.body)).not.toContain('FLAG_ME');
    // The completion was produced and billed: usage is reported.
    expect(res.body.usage.completion_tokens).toBeGreaterThan(0);
    // Input (clean) and output: two moderation calls, the output one on the completion text.
    const mods = fake.requestsTo(MODERATIONS);
    expect(mods).toHaveLength(2);
    expect(mods[1].body.input).toEqual(['Here you go: FLAG_ME and more']);
  });

  it('POST /chat/moderated passes a clean completion, marked unflagged', async () => {
    const res = await request(h.server).post('/chat/moderated').set(auth()).send(userMessage('hello'));
    expect(res.status).toBe(200);
    expect(res.body.content).toBe('Echo: hello');
    expect(res.body.output_moderation).toEqual({ flagged: false, categories: [] });
  });

  it('POST /chat (no output moderation) returns the completion as is, with a single (input) moderation call', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .send(userMessage('unmoderated: say something bad'));
    expect(res.status).toBe(200);
    expect(res.body.content).toBe('Here you go: FLAG_ME and more');
    expect(res.body.output_moderation).toBeUndefined();
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(1);
  });

  it('counts output flags in openai_moderation_flags_total{direction="output"}', async () => {
    const read = async () => {
      const text = (await request(h.server).get('/metrics')).text;
      const m = /openai_moderation_flags_total\{direction="output",category="harassment"\} (\d+)/.exec(text);
      return m ? Number(m[1]) : 0;
    };
    const before = await read();
    await request(h.server)
      .post('/chat/moderated')
      .set(auth())
      .send(userMessage('say something bad again'))
      .expect(200);
    expect(await read()).toBe(before + 1);
  });
});

describe.each(PLATFORMS)('output moderation of streams and per-call options (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  let metrics: OpenAIMetricsService;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ reply, moderationTriggers: triggers });
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, { moderation: { streamCheckIntervalChars: 200 } }),
      {
        controllers: [ModerationFixtureController],
      },
    );
    metrics = h.app.get(OpenAIMetricsService);
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  async function drain(stream: ChatStream): Promise<{ text: string; error?: unknown }> {
    let text = '';
    try {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
      return { text };
    } catch (error) {
      return { text, error };
    }
  }

  it('OpenAIService.chat with moderateOutput: true replaces a flagged completion', async () => {
    const r = await h.openai.chat(
      { messages: [{ role: 'user', content: 'say something bad' }] },
      { moderateOutput: true },
    );
    expect(r.content).toBe(SAFE);
    expect(r.completion.choices[0].message.content).toBe(SAFE);
    expect(r.outputModeration).toEqual({ flagged: true, categories: ['harassment'] });
  });

  it('moderateOutput with categories only counts those categories', async () => {
    const r = await h.openai.chat(
      { messages: [{ role: 'user', content: 'say something bad' }] },
      { moderateOutput: { categories: ['violence'] } },
    );
    expect(r.content).toBe('Here you go: FLAG_ME and more');
    expect(r.outputModeration).toEqual({ flagged: false, categories: [] });
    const v = await h.openai.chat(
      { messages: [{ role: 'user', content: 'say something violent' }] },
      { moderateOutput: { categories: ['violence'] } },
    );
    expect(v.outputModeration).toEqual({ flagged: true, categories: ['violence'] });
  });

  it("@Moderate({ categories, output: true }): the route's categories apply to the output check too", async () => {
    const res = await request(h.server)
      .post('/chat/moderated/violence-only')
      .send(userMessage('say something bad'));
    expect(res.status).toBe(200);
    expect(res.body.output_moderation).toEqual({ flagged: false, categories: [] });
    expect(res.body.content).toBe('Here you go: FLAG_ME and more');
    const v = await request(h.server)
      .post('/chat/moderated/violence-only')
      .send(userMessage('say something violent'));
    expect(v.body).toMatchObject({
      content: SAFE,
      output_moderation: { flagged: true, categories: ['violence'] },
    });
  });

  it('OpenAIService.stream with moderateOutput: true stops a flagged stream with a 422 output_flagged, before the end', async () => {
    const flagsBefore = await flagCount(metrics, 'harassment');
    const stream = await h.openai.stream(
      { messages: [{ role: 'user', content: 'long bad' }] },
      { moderateOutput: true },
    );
    const { text, error } = await drain(stream);
    expect(error).toBeDefined();
    expect((error as { getStatus(): number }).getStatus()).toBe(422);
    expect((error as { getResponse(): unknown }).getResponse()).toMatchObject({
      error: 'output_flagged',
      categories: ['harassment'],
    });
    // Checked every 200 characters: the stream was cut long before its end.
    expect(text.length).toBeLessThan(FLAGGED_EARLY.length);
    expect(text).not.toContain('tail149');
    await expect(stream.finished).rejects.toMatchObject({ status: 422 });
    expect(stream.flaggedCategories).toEqual(['harassment']);
    expect(await flagCount(metrics, 'harassment')).toBe(flagsBefore + 1);
  });

  it('a clean stream is checked along the way and at the end, and completes', async () => {
    const stream = await h.openai.stream(
      { messages: [{ role: 'user', content: 'long clean' }] },
      { moderateOutput: true },
    );
    const { text, error } = await drain(stream);
    expect(error).toBeUndefined();
    expect(text).toBe(CLEAN_LONG);
    const summary = await stream.finished;
    expect(summary.content).toBe(CLEAN_LONG);
    // ~1,000 characters checked every 200: several checks, the last one on the whole text.
    const mods = fake.requestsTo(MODERATIONS);
    expect(mods.length).toBeGreaterThanOrEqual(Math.floor(CLEAN_LONG.length / 200));
    expect(mods.at(-1)!.body.input).toEqual([CLEAN_LONG]);
  });

  it('a short flagged stream is caught by the final check', async () => {
    const stream = await h.openai.stream(
      { messages: [{ role: 'user', content: 'say something bad' }] },
      { moderateOutput: true },
    );
    const { error } = await drain(stream);
    expect((error as { getResponse(): unknown }).getResponse()).toMatchObject({
      statusCode: 422,
      error: 'output_flagged',
    });
  });

  it('a stream without moderateOutput is not moderated', async () => {
    const stream = await h.openai.stream({ messages: [{ role: 'user', content: 'say something bad' }] });
    const { text, error } = await drain(stream);
    expect(error).toBeUndefined();
    expect(text).toContain('FLAG_ME');
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(0);
  });

  it('SSE route with @Moderate({ output: true }): one output_flagged error event, no usage event, no [DONE]', async () => {
    const res = await request(h.server)
      .post('/chat/moderated/stream')
      .set('x-request-id', 'sse-flag-1')
      .send(userMessage('long bad'))
      .buffer(true)
      .parse(sseParser);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/event-stream');
    const events = sseEvents(res.body as string);
    expect(events).not.toContain('[DONE]');
    const parsed = events.map((e) => JSON.parse(e) as Record<string, any>);
    const errors = parsed.filter((e) => e.error);
    expect(errors).toHaveLength(1);
    expect(parsed.at(-1)).toBe(errors[0]);
    expect(errors[0].error).toEqual({
      statusCode: 422,
      error: 'output_flagged',
      message: expect.any(String),
      request_id: 'sse-flag-1',
    });
    expect(parsed.some((e) => e.usage)).toBe(false);
    const deltas = parsed
      .filter((e) => typeof e.delta === 'string')
      .map((e) => e.delta)
      .join('');
    expect(deltas.length).toBeLessThan(FLAGGED_EARLY.length);
  });

  it('SSE route: a clean stream ends with usage and [DONE]', async () => {
    const res = await request(h.server)
      .post('/chat/moderated/stream')
      .send(userMessage('long clean'))
      .buffer(true)
      .parse(sseParser);
    const events = sseEvents(res.body as string);
    expect(events.at(-1)).toBe('[DONE]');
    expect(JSON.parse(events.at(-2)!).usage.completion_tokens).toBeGreaterThan(0);
    const deltas = events
      .slice(0, -2)
      .map((e) => JSON.parse(e).delta)
      .join('');
    expect(deltas).toBe(CLEAN_LONG);
  });
});

async function flagCount(metrics: OpenAIMetricsService, category: string): Promise<number> {
  const text = await metrics.metrics();
  const m = new RegExp(
    `openai_moderation_flags_total\\{direction="output",category="${category.replace('/', '\\/')}"\\} (\\d+)`,
  ).exec(text);
  return m ? Number(m[1]) : 0;
}
