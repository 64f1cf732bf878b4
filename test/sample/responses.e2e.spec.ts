import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { sseEvents, sseText } from '../support/fixture-app.js';
import { PLATFORMS, auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';

const RESPONSES = '/v1/responses';

describe.each(PLATFORMS)('sample POST /responses and /responses/stream on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake, { OPENAI_MAX_RETRIES: '1', RATE_LIMIT_TPM: '100000' });
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('answers with output_text, usage in Responses names, cost and both request IDs', async () => {
    const res = await request(h.server)
      .post('/responses')
      .set(auth())
      .set('x-request-id', 'resp-1')
      .send({ input: 'Say hello', instructions: 'Be brief.' });
    expect(res.status).toBe(200);
    const upstream = fake.requestsTo(RESPONSES);
    expect(upstream).toHaveLength(1);
    expect(res.body).toMatchObject({
      output_text: 'Echo: Say hello',
      request_id: 'resp-1',
      openai_request_id: upstream[0].requestId,
    });
    expect(res.body.id).toMatch(/^resp_/);
    expect(res.body.usage.input_tokens).toBeGreaterThan(0);
    expect(res.body.usage.output_tokens).toBeGreaterThan(0);
    expect(res.body.usage.total_tokens).toBe(res.body.usage.input_tokens + res.body.usage.output_tokens);
    expect(res.body.cost_usd).toBeGreaterThan(0);
    expect(res.headers['x-openai-request-id']).toBe(upstream[0].requestId);
    expect(res.headers['x-ratelimit-limit']).toBeDefined();
    // Sent upstream: the user only as a hash, nothing stored by default, the output cap applied.
    expect(upstream[0].body.safety_identifier).toMatch(/^[0-9a-f]{64}$/);
    expect(upstream[0].body.store).toBe(false);
    expect(upstream[0].body.max_output_tokens).toBe(1024);
    expect(JSON.stringify(upstream[0].body)).not.toContain('alice');
  });

  it('accepts a message list with input_text parts; refuses other part types and unknown fields (400)', async () => {
    const ok = await request(h.server)
      .post('/responses')
      .set(auth())
      .send({ input: [{ role: 'user', content: [{ type: 'input_text', text: 'parts work' }] }] });
    expect(ok.status).toBe(200);
    expect(ok.body.output_text).toBe('Echo: parts work');
    const image = await request(h.server)
      .post('/responses')
      .set(auth())
      .send({ input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'http://x' }] }] });
    expect(image.status).toBe(400);
    expect(image.body.error).toBe('invalid_body');
    const unknown = await request(h.server).post('/responses').set(auth()).send({ input: 'x', tools: [] });
    expect(unknown.status).toBe(400);
    expect(fake.requestsTo(RESPONSES)).toHaveLength(1);
  });

  it('moderates the input (422 with categories, no model call) and caps it (413)', async () => {
    const flagged = await request(h.server).post('/responses').set(auth()).send({ input: 'FLAG_ME please' });
    expect(flagged.status).toBe(422);
    expect(flagged.body.categories).toEqual(['harassment']);
    const inInstructions = await request(h.server)
      .post('/responses')
      .set(auth())
      .send({ input: 'hi', instructions: 'FLAG_ME' });
    expect(inInstructions.status).toBe(422);
    const big = await request(h.server)
      .post('/responses')
      .set(auth())
      .send({ input: 'word '.repeat(40_000) });
    expect(big.status).toBe(413);
    expect(fake.requestsTo(RESPONSES)).toHaveLength(0);
  });

  it('streams deltas, then usage and cost, then [DONE]', async () => {
    const res = await request(h.server)
      .post('/responses/stream')
      .set(auth())
      .send({ input: 'stream this please' })
      .buffer(true)
      .parse(sseText);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/event-stream');
    const events = sseEvents(res.body as string);
    expect(events.at(-1)).toBe('[DONE]');
    const parsed = events.slice(0, -1).map((e) => JSON.parse(e));
    const text = parsed
      .filter((e) => 'delta' in e)
      .map((e) => e.delta)
      .join('');
    expect(text).toBe('Echo: stream this please');
    const usage = parsed.find((e) => 'usage' in e);
    expect(usage.usage.prompt_tokens).toBeGreaterThan(0);
    expect(usage.cost_usd).toBeGreaterThan(0);
  });

  it.each([
    ['response.failed', { streamFailAfterChunks: 2 }],
    ['an error event', { streamErrorEventAfterChunks: 2 }],
    ['a cut connection', { streamCutAfterChunks: 2 }],
  ])(
    'a stream ended by %s: one error event, no [DONE], what was received is accounted',
    async (_n, fault) => {
      const before = (await request(h.server).get('/usage').set(auth('bob-token'))).body;
      fake.fault({ path: RESPONSES, ...fault });
      const res = await request(h.server)
        .post('/responses/stream')
        .set(auth('bob-token'))
        .send({ input: 'one two three four five six seven' })
        .buffer(true)
        .parse(sseText);
      const events = sseEvents(res.body as string);
      expect(events).not.toContain('[DONE]');
      const last = JSON.parse(events.at(-1)!);
      expect(last.error).toMatchObject({ statusCode: 502 });
      expect(events.filter((e) => e.startsWith('{"delta"')).length).toBeGreaterThan(0);
      const after = (await request(h.server).get('/usage').set(auth('bob-token'))).body;
      expect(after.requests).toBe(before.requests + 1);
      expect(after.completion_tokens).toBeGreaterThan(before.completion_tokens);
    },
  );

  it('GET /usage counts chat and responses calls together', async () => {
    const before = (await request(h.server).get('/usage').set(auth('bob-token'))).body;
    const chat = await request(h.server).post('/chat').set(auth('bob-token')).send(userMessage('one'));
    const resp = await request(h.server).post('/responses').set(auth('bob-token')).send({ input: 'two' });
    const after = (await request(h.server).get('/usage').set(auth('bob-token'))).body;
    expect(after.requests).toBe(before.requests + 2);
    expect(after.prompt_tokens - before.prompt_tokens).toBe(
      chat.body.usage.prompt_tokens + resp.body.usage.input_tokens,
    );
    expect(after.completion_tokens - before.completion_tokens).toBe(
      chat.body.usage.completion_tokens + resp.body.usage.output_tokens,
    );
  });

  it('a failing upstream after retries: 502 JSON with the request ID', async () => {
    fake.fault({ path: RESPONSES, status: 500 });
    const res = await request(h.server)
      .post('/responses')
      .set(auth())
      .set('x-request-id', 'r502')
      .send({ input: 'x' });
    expect(res.status).toBe(502);
    expect(res.body).toMatchObject({ statusCode: 502, error: 'upstream_error', request_id: 'r502' });
    expect(fake.requestsTo(RESPONSES)).toHaveLength(2);
  });
});
