import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fingerprintKey } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';

const KEY_1 = 'sk-proj-rotation-FIRST-secret-0000000000000001';
const KEY_2 = 'sk-proj-rotation-SECOND-secret-000000000000002';
const body = { messages: [{ role: 'user', content: 'hello' }] };

describe.each(PLATFORMS)('API key provider on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  let current = KEY_1;
  let calls = 0;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(
        fake.baseURL,
        async () => {
          calls++;
          return current;
        },
        {
          // Ask the provider before every request (the SDK's own behaviour), as this suite counts it.
          apiKeyCacheMs: 0,
          retry: { maxRetries: 1 },
          timeouts: { attemptMs: 300, deadlineMs: 3_000 },
        },
      ),
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
    fake.setApiKeys(undefined);
    current = KEY_1;
  });

  it('asks the provider again for each request, and a rotated key is used without a restart', async () => {
    fake.setApiKeys([KEY_1]);
    const before = calls;
    await request(h.server).post('/chat').send(body).expect(200);
    await request(h.server).post('/chat').send(body).expect(200);
    expect(calls - before).toBe(2);
    expect(fake.requestsTo('/v1/chat/completions').map((r) => r.headers.authorization)).toEqual([
      `Bearer ${KEY_1}`,
      `Bearer ${KEY_1}`,
    ]);

    // The secret store rotates: the upstream only accepts the new key from now on.
    current = KEY_2;
    fake.setApiKeys([KEY_2]);
    fake.reset();
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(200);
    expect(res.body.content).toBe('Echo: hello');
    expect(fake.requestsTo('/v1/chat/completions').map((r) => r.headers.authorization)).toEqual([
      `Bearer ${KEY_2}`,
    ]);
  });

  it('401 upstream: 502 upstream_auth_error, not retried, logged with the key fingerprint only', async () => {
    fake.setApiKeys(['sk-some-other-key-the-upstream-wants-0000']);
    const res = await request(h.server).post('/chat').set('x-request-id', 'auth-fail-1').send(body);
    expect(res.status).toBe(502);
    expect(res.body).toMatchObject({
      statusCode: 502,
      error: 'upstream_auth_error',
      request_id: 'auth-fail-1',
    });
    expect(res.body.message).not.toMatch(/Incorrect API key/);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
    const line = h.logger.records('openai call failed').find((l) => l.request_id === 'auth-fail-1')!;
    expect(line).toMatchObject({
      status: 502,
      upstream_status: 401,
      error: 'upstream_auth_error',
      key: fingerprintKey(KEY_1),
    });
    expect(line.key).toBe('sk-proj-...0001');
    expect(h.logger.lines.find((l) => l.message === line)?.level).toBe('error');
    expect(h.logger.text()).not.toContain(KEY_1);
  });

  it('the key never appears in a log line, a response body or a header, whatever fails (500, 401, timeout, 400)', async () => {
    const responses: request.Response[] = [];
    fake.fault({
      path: '/v1/chat/completions',
      status: 500,
      times: 2,
      errorMessage: `upstream echoed ${KEY_1}`,
    });
    responses.push(await request(h.server).post('/chat').send(body));
    fake.reset();
    fake.setApiKeys(['sk-some-other-key-the-upstream-wants-0000']);
    responses.push(await request(h.server).post('/chat').send(body));
    fake.setApiKeys(undefined);
    fake.fault({ path: '/v1/chat/completions', hang: true });
    responses.push(await request(h.server).post('/chat').send(body));
    fake.reset();
    fake.fault({
      path: '/v1/chat/completions',
      status: 400,
      errorCode: 'invalid_value',
      errorMessage: `bad key ${KEY_1} in Bearer ${KEY_1}`,
    });
    responses.push(await request(h.server).post('/chat').send(body));
    responses.push(await request(h.server).post('/chat/stream').send(body));

    expect(responses.map((r) => r.status)).toEqual([502, 502, 504, 400, 400]);
    for (const r of responses) {
      const everything = JSON.stringify(r.body) + JSON.stringify(r.headers) + (r.text ?? '');
      expect(everything).not.toContain(KEY_1);
      expect(everything).not.toContain('rotation-FIRST');
    }
    const logs = h.logger.text();
    expect(logs).toContain('openai call failed');
    expect(logs).not.toContain(KEY_1);
    expect(logs).not.toContain('rotation-FIRST');
  });
});

describe.each(PLATFORMS)('key refresh on 401 on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  let current = KEY_1;
  let calls = 0;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ apiKeys: [KEY_1] });
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, async () => {
        calls++;
        // A secret store that takes a moment, so the 401s of a burst overlap the refresh.
        await new Promise((r) => setTimeout(r, 20));
        return current;
      }),
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });

  it('the key is cached; after a rotation 20 concurrent 401s refresh it once and every call succeeds', async () => {
    await request(h.server).post('/chat').send(body).expect(200);
    await request(h.server).post('/chat').send(body).expect(200);
    expect(calls).toBe(1);

    current = KEY_2;
    fake.setApiKeys([KEY_2]);
    fake.reset();
    const before = calls;
    const res = await Promise.all(
      Array.from({ length: 20 }, () => request(h.server).post('/chat').send(body)),
    );
    expect(res.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(calls - before).toBe(1);
    const auth = fake.requestsTo('/v1/chat/completions').map((r) => r.headers.authorization);
    expect(auth.filter((a) => a === `Bearer ${KEY_2}`)).toHaveLength(20);
    // Every request refused with the old key was sent once more, never twice.
    expect(auth.filter((a) => a === `Bearer ${KEY_1}`).length).toBeLessThanOrEqual(20);
    const refreshed = h.logger.records('api key refreshed after an upstream 401');
    expect(refreshed).toHaveLength(1);
    expect(refreshed[0]).toMatchObject({ key: fingerprintKey(KEY_2), changed: true });
    expect(h.logger.text()).not.toContain(KEY_2);
  });

  it('a provider that still returns the refused key: one refresh, no resend, 502 upstream_auth_error', async () => {
    current = KEY_2; // the cached key: the provider has nothing newer
    fake.setApiKeys(['sk-proj-a-key-nobody-has-000000000000003']);
    fake.reset();
    const before = calls;
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(502);
    expect(res.body.error).toBe('upstream_auth_error');
    expect(calls - before).toBe(1);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
  });
});

describe.each(PLATFORMS)('static API key on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ apiKeys: ['sk-not-the-configured-one-000000000'] });
    h = await startFixtureApp(platform, fixtureOptions(fake.baseURL, TEST_API_KEY));
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });

  it('401 upstream: the log line names the fingerprint, never the key', async () => {
    const res = await request(h.server).post('/chat').send(body);
    expect(res.status).toBe(502);
    expect(res.body.error).toBe('upstream_auth_error');
    expect(h.logger.records('openai call failed').at(-1)).toMatchObject({
      key: 'sk-...abcd',
      upstream_status: 401,
    });
    expect(h.logger.text()).not.toContain(TEST_API_KEY);
  });
});
