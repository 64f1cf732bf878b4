import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RequestContextStore, hashUserId, type ChatStream } from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { RecordingHook } from '../support/recording-hook.js';

const SALT = 'service-test-salt';
const CHAT = '/v1/chat/completions';

describe('OpenAIService outside HTTP (a worker, no request context)', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  const hook = new RecordingHook();
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { identity: { salt: SALT } }),
      { hooks: [hook] },
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
    hook.clear();
  });

  it('runs with no request context', () => {
    expect(RequestContextStore.get()).toBeUndefined();
  });

  it('chat: content, real usage, the user hashed into safety_identifier, a log line with the user', async () => {
    const messages = [{ role: 'user' as const, content: 'summarise the queue' }];
    const r = await h.openai.chat({ messages }, { user: 'worker-user-7', route: 'queue:summaries' });
    expect(r.content).toBe('Echo: summarise the queue');
    expect(r.usage).toMatchObject({ prompt_tokens: countChatPromptTokens(messages), estimated: false });
    expect(r.usage.completion_tokens).toBeGreaterThan(0);
    const [req] = fake.requestsTo(CHAT);
    expect(req.body.safety_identifier).toBe(hashUserId('worker-user-7', SALT));
    expect(req.body.user).toBeUndefined();
    expect(JSON.stringify(req.body)).not.toContain('worker-user-7');
    expect(r.openaiRequestId).toBe(req.requestId);
    expect(hook.reserved[0]).toMatchObject({
      endpoint: 'chat.completions',
      user: 'worker-user-7',
      route: 'queue:summaries',
      requestId: undefined,
    });
    expect(hook.settled).toHaveLength(1);
    const line = h.logger.records('openai call').at(-1)!;
    expect(line).toMatchObject({
      user: 'worker-user-7',
      route: 'queue:summaries',
      status: 'ok',
      openai_request_id: req.requestId,
    });
    expect(line).not.toHaveProperty('request_id');
  });

  it('chat without a user sends no identifier', async () => {
    await h.openai.chat({ messages: [{ role: 'user', content: 'x' }] });
    const { body } = fake.requestsTo(CHAT)[0];
    expect(body.safety_identifier).toBeUndefined();
    expect(body.user).toBeUndefined();
  });

  it('an empty message list is a 400 before any upstream call', async () => {
    await expect(h.openai.chat({ messages: [] })).rejects.toMatchObject({ status: 400 });
    expect(fake.requests).toHaveLength(0);
  });

  it('stream: chunks as they come, finished resolves with the real usage', async () => {
    const messages = [{ role: 'user' as const, content: 'alpha beta gamma' }];
    const s: ChatStream = await h.openai.stream({ messages }, { user: 'worker-user-7' });
    let text = '';
    let chunks = 0;
    for await (const chunk of s) {
      chunks++;
      text += chunk.choices[0]?.delta?.content ?? '';
    }
    expect(text).toBe('Echo: alpha beta gamma');
    expect(chunks).toBeGreaterThan(3);
    const summary = await s.finished;
    expect(summary.content).toBe(text);
    expect(summary.finishReason).toBe('stop');
    expect(summary.usage).toMatchObject({ prompt_tokens: countChatPromptTokens(messages), estimated: false });
    expect(summary.usage.completion_tokens).toBeGreaterThan(0);
    const [req] = fake.requestsTo(CHAT);
    expect(req.body).toMatchObject({
      stream: true,
      stream_options: { include_usage: true },
      safety_identifier: hashUserId('worker-user-7', SALT),
    });
    expect(s.openaiRequestId).toBe(req.requestId);
    expect(hook.settled).toEqual([expect.objectContaining({ usage: summary.usage })]);
  });

  it('a ChatStream can be iterated only once', async () => {
    const s = await h.openai.stream({ messages: [{ role: 'user', content: 'once' }] });
    for await (const _ of s) void _;
    await expect(async () => {
      for await (const _ of s) void _;
    }).rejects.toThrow(/once/);
  });

  it('moderate: one call for an array of inputs, flagged by the trigger', async () => {
    const r = await h.openai.moderate(['a friendly note', 'please FLAG_ME now'], { user: 'worker-user-7' });
    expect(r.flagged).toBe(true);
    expect(r.response.results).toHaveLength(2);
    expect(r.response.results[0].flagged).toBe(false);
    expect(r.response.results[1].flagged).toBe(true);
    expect(r.response.results[1].categories.harassment).toBe(true);
    const reqs = fake.requestsTo('/v1/moderations');
    expect(reqs).toHaveLength(1);
    expect(reqs[0].body).toMatchObject({
      model: 'omni-moderation-latest',
      input: ['a friendly note', 'please FLAG_ME now'],
    });
    expect(JSON.stringify(reqs[0].body)).not.toContain('worker-user-7');
  });

  it('moderate: clean text is not flagged; a 500 is retried', async () => {
    fake.fault({ path: '/v1/moderations', status: 500, times: 1 });
    const r = await h.openai.moderate('hello there');
    expect(r.flagged).toBe(false);
    expect(r.attempts).toBe(2);
    expect(fake.requestsTo('/v1/moderations')).toHaveLength(2);
  });

  it('embed: vectors and usage; the user goes upstream hashed (in `user`, the field embeddings accept)', async () => {
    const r = await h.openai.embed({ input: ['first text', 'second text'] }, { user: 'worker-user-7' });
    expect(r.response.data).toHaveLength(2);
    expect(r.response.data[0].embedding).toHaveLength(8);
    expect(r.model).toBe('text-embedding-3-small');
    expect(r.usage.prompt_tokens).toBeGreaterThan(0);
    expect(r.usage.completion_tokens).toBe(0);
    const [req] = fake.requestsTo('/v1/embeddings');
    expect(req.body.model).toBe('text-embedding-3-small');
    expect(req.body.user).toBe(hashUserId('worker-user-7', SALT));
    expect(JSON.stringify(req.body)).not.toContain('worker-user-7');
    expect(hook.reserved[0]).toMatchObject({
      endpoint: 'embeddings',
      user: 'worker-user-7',
      promptTokens: r.usage.prompt_tokens,
    });
    expect(hook.settled).toHaveLength(1);
  });

  it('embed: one token array counts as one input of that many tokens', async () => {
    const r = await h.openai.embed({ input: [101, 102, 103, 104] });
    expect(r.response.data).toHaveLength(1);
    expect(r.usage.prompt_tokens).toBe(4);
    expect(hook.reserved[0].promptTokens).toBe(4);
    expect(fake.requestsTo('/v1/embeddings')[0].body.user).toBeUndefined();
  });
});

describe('identity field options', () => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await fake.close();
  });

  it("identity.field 'user' sends the hash as `user`; 'none' sends nothing", async () => {
    const asUser = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { identity: { field: 'user' } }),
    );
    try {
      await asUser.openai.chat({ messages: [{ role: 'user', content: 'x' }] }, { user: 'u1' });
      expect(fake.requests[0].body.user).toBe(hashUserId('u1', ''));
      expect(fake.requests[0].body.safety_identifier).toBeUndefined();
    } finally {
      await asUser.close();
    }
    fake.reset();
    const none = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { identity: { field: 'none' } }),
    );
    try {
      await none.openai.chat({ messages: [{ role: 'user', content: 'x' }] }, { user: 'u1' });
      await none.openai.embed({ input: 'x' }, { user: 'u1' });
      for (const r of fake.requests) {
        expect(r.body.user).toBeUndefined();
        expect(r.body.safety_identifier).toBeUndefined();
      }
    } finally {
      await none.close();
    }
  });
});
