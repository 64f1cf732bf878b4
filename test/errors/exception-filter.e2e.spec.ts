import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { auth, startSampleApp } from '../support/sample-app.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The error body of the contract, exactly these keys (plus extras a specific error declares). */
function expectErrorBody(res: request.Response, status: number, error: string) {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toContain('application/json');
  expect(res.body).toEqual({
    statusCode: status,
    error,
    message: expect.any(String),
    request_id: res.headers['x-request-id'],
  });
  expect(res.text).not.toMatch(/\bat \S+ \(|\.ts:\d+|node_modules|stack/i);
}

describe.each(PLATFORMS)('OpenAIExceptionFilter on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(platform, fixtureOptions(fake.baseURL, TEST_API_KEY));
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  it('a body that is not JSON: 400 JSON with the request ID, no upstream call', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set('content-type', 'application/json')
      .set('x-request-id', 'bad-json-1')
      .send('{"messages": [');
    expectErrorBody(res, 400, 'invalid_body');
    expect(res.body.request_id).toBe('bad-json-1');
    expect(res.body.message).toBe('Request body is not valid JSON');
    expect(fake.requests).toHaveLength(0);
  });

  it('a body that is not JSON, without an inbound ID: a fresh UUID, the same in header and body', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set('content-type', 'application/json')
      .send('not json at all');
    expectErrorBody(res, 400, 'invalid_body');
    expect(res.body.request_id).toMatch(UUID);
  });

  it('a body over the size limit: 413 payload_too_large', async () => {
    const huge = JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(2 * 1024 * 1024) }] });
    const res = await request(h.server).post('/chat').set('content-type', 'application/json').send(huge);
    expectErrorBody(res, 413, 'payload_too_large');
    expect(fake.requests).toHaveLength(0);
  });

  it('an unknown route: 404 JSON with the request ID', async () => {
    const res = await request(h.server).get('/no/such/route').set('x-request-id', 'nf-1');
    expectErrorBody(res, 404, 'not_found');
    expect(res.body.request_id).toBe('nf-1');
  });

  it('an unexpected error in a handler: 500 internal_error, no message details, no stack; logged with the request ID', async () => {
    const res = await request(h.server).get('/boom').set('x-request-id', 'boom-1');
    expectErrorBody(res, 500, 'internal_error');
    expect(res.body.message).toBe('Internal server error');
    expect(res.text).not.toContain('hunter2');
    expect(res.text).not.toContain('secret.ts');
    const line = h.logger.records('unhandled error').find((l) => l.request_id === 'boom-1');
    expect(line).toBeDefined();
    expect(h.logger.lines.find((l) => l.message === line)?.level).toBe('error');
  });

  it('an upstream failure keeps the same shape (502)', async () => {
    fake.fault({ path: '/v1/chat/completions', status: 500 });
    const res = await request(h.server)
      .post('/chat')
      .send({ messages: [{ role: 'user', content: 'x' }] });
    expectErrorBody(res, 502, 'upstream_error');
    expect(res.body.message).not.toContain('fake fault');
  });

  it('the error message does not echo the upstream error text', async () => {
    fake.fault({
      path: '/v1/chat/completions',
      status: 400,
      errorMessage: 'your prompt "my secret plans" is invalid',
      errorCode: 'invalid_prompt',
    });
    const res = await request(h.server)
      .post('/chat')
      .send({ messages: [{ role: 'user', content: 'my secret plans' }] });
    expectErrorBody(res, 400, 'invalid_request');
    expect(res.text).not.toContain('secret plans');
    // Only the library's words reach the client; the upstream code is in the log.
    expect(res.text).not.toContain('invalid_prompt');
    expect(h.logger.records('openai call failed').at(-1)).toMatchObject({ upstream_code: 'invalid_prompt' });
  });
});

describe.each(PLATFORMS)('sample error bodies on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: Awaited<ReturnType<typeof startSampleApp>>;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake);
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });

  it('a wrong body shape: 400 invalid_body naming the paths, never the values', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .send({ messages: [{ role: 'wizard', content: 'secret-value-123' }], logit_bias: {} });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({
      statusCode: 400,
      error: 'invalid_body',
      request_id: res.headers['x-request-id'],
    });
    expect(res.body.issues.map((i: { path: string }) => i.path)).toEqual(
      expect.arrayContaining(['messages.0.role']),
    );
    expect(res.text).not.toContain('secret-value-123');
    expect(fake.requests).toHaveLength(0);
  });

  it('invalid JSON before authentication: still the JSON error body', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .set('content-type', 'application/json')
      .send('{"messages":');
    expect(res.status).toBe(400);
    expect(res.body).toEqual({
      statusCode: 400,
      error: 'invalid_body',
      message: 'Request body is not valid JSON',
      request_id: res.headers['x-request-id'],
    });
  });
});
