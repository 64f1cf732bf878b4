import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  auth,
  startSampleApp,
  userMessage,
  type SampleAppHandle,
} from '../support/sample-app.js';

describe.each(PLATFORMS)('sample POST /chat on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake, { OPENAI_MAX_RETRIES: '2' });
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('answers with content, usage and both request IDs, and logs them on one line', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', 'client-req-1')
      .send(userMessage('Say hello'));
    expect(res.status).toBe(200);
    const upstream = fake.requestsTo('/v1/chat/completions');
    expect(upstream).toHaveLength(1);
    expect(res.body.content).toBe('Echo: Say hello');
    expect(res.body.request_id).toBe('client-req-1');
    expect(res.headers['x-request-id']).toBe('client-req-1');
    expect(res.body.openai_request_id).toBe(upstream[0].requestId);
    expect(res.headers['x-openai-request-id']).toBe(upstream[0].requestId);
    expect(res.body.usage.total_tokens).toBe(res.body.usage.prompt_tokens + res.body.usage.completion_tokens);
    const line = h.logger.records('openai call').at(-1)!;
    expect(line).toMatchObject({
      request_id: 'client-req-1',
      openai_request_id: upstream[0].requestId,
      user: 'alice',
      status: 'ok',
      retries: 0,
    });
  });

  it('passes the user upstream only as a hash', async () => {
    await request(h.server).post('/chat').set(auth()).send(userMessage('hi')).expect(200);
    const body = fake.requestsTo('/v1/chat/completions')[0].body;
    expect(body.safety_identifier).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(body)).not.toContain('alice');
  });

  it('replaces an insane inbound request ID', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', 'bad id with spaces')
      .send(userMessage('x'));
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('401 without a token, with the JSON error body and a request ID', async () => {
    const res = await request(h.server).post('/chat').send(userMessage('x'));
    expect(res.status).toBe(401);
    expect(res.body).toMatchObject({ statusCode: 401, error: 'unauthorized' });
    expect(res.body.request_id).toBe(res.headers['x-request-id']);
    expect(fake.requests).toHaveLength(0);
  });

  it('502 after retries on a failing upstream, without leaking the key', async () => {
    fake.fault({ path: '/v1/chat/completions', status: 500 });
    const res = await request(h.server).post('/chat').set(auth()).send(userMessage('x'));
    expect(res.status).toBe(502);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(3);
    expect(JSON.stringify(res.body)).not.toContain(TEST_API_KEY);
    expect(h.logger.text()).not.toContain(TEST_API_KEY);
  });

  it('streams deltas, then usage, then [DONE]', async () => {
    const res = await request(h.server)
      .post('/chat/stream')
      .set(auth())
      .send(userMessage('one two three'))
      .buffer(true)
      .parse((r, cb) => {
        let data = '';
        r.on('data', (c: Buffer) => (data += c.toString()));
        r.on('end', () => cb(null, data));
      });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/event-stream');
    const events = (res.body as string)
      .split('\n\n')
      .filter(Boolean)
      .map((e) => e.replace(/^data: /, ''));
    expect(events.at(-1)).toBe('[DONE]');
    const deltas = events
      .slice(0, -2)
      .map((e) => JSON.parse(e).delta)
      .join('');
    expect(deltas).toBe('Echo: one two three');
    expect(JSON.parse(events.at(-2)!).usage.completion_tokens).toBeGreaterThan(0);
  });
});
