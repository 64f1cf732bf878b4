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
import { auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';
import { ModerationFixtureController, expectNoLeak } from './moderation-fixture.js';

const CHAT = '/v1/chat/completions';
const MODERATIONS = '/v1/moderations';

function expectFlagged(res: request.Response, categories: string[]) {
  expect(res.status).toBe(422);
  expect(res.headers['content-type']).toContain('application/json');
  // Names only: no scores, no verdict map, no text.
  expect(res.body).toEqual({
    statusCode: 422,
    error: 'input_flagged',
    message: expect.any(String),
    request_id: res.headers['x-request-id'],
    categories,
  });
  expectNoLeak(res);
}

describe.each(PLATFORMS)('input moderation on the sample app (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake, { MODERATION: 'on' });
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  it('a flagged user message: 422 input_flagged with the category names only, and no chat call upstream', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .set('x-request-id', 'mod-flag-1')
      .send(userMessage('you are awful FLAG_ME please'));
    expectFlagged(res, ['harassment']);
    expect(res.body.request_id).toBe('mod-flag-1');
    expect(res.text).not.toContain('FLAG_ME');
    expect(res.text).not.toMatch(/0\.95|score/);
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(1);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('several flagged categories are all named, sorted', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .send(userMessage('KILL_ME_NOW and FLAG_ME'));
    expectFlagged(res, ['harassment', 'self-harm', 'self-harm/intent']);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('an unflagged message: 200, after one moderation call', async () => {
    const res = await request(h.server).post('/chat').set(auth()).send(userMessage('what a lovely day'));
    expect(res.status).toBe(200);
    expect(res.body.content).toBe('Echo: what a lovely day');
    const [mod] = fake.requestsTo(MODERATIONS);
    expect(mod.body.input).toEqual(['what a lovely day']);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it('every message a client sent goes in ONE moderations call (array input), text parts included', async () => {
    const body = {
      messages: [
        { role: 'system', content: 'system rules' },
        { role: 'user', content: 'first question' },
        { role: 'assistant', content: 'assistant says hi' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'part one' },
            { type: 'text', text: 'part two' },
          ],
        },
        { role: 'user', content: 'third question' },
      ],
    };
    const res = await request(h.server).post('/chat').set(auth()).send(body);
    expect(res.status).toBe(200);
    const mods = fake.requestsTo(MODERATIONS);
    expect(mods).toHaveLength(1);
    expect(mods[0].body.input).toEqual([
      'system rules',
      'first question',
      'assistant says hi',
      'part one\npart two',
      'third question',
    ]);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it('a flagged word inside a text part of multi-part content is caught', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .send({
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: 'harmless' },
              { type: 'text', text: 'then FLAG_ME' },
            ],
          },
        ],
      });
    expectFlagged(res, ['harassment']);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('the sample takes system, developer and assistant messages from the client, so it moderates them too', async () => {
    for (const role of ['system', 'developer', 'assistant']) {
      const res = await request(h.server)
        .post('/chat')
        .set(auth())
        .send({
          messages: [
            { role, content: `FLAG_ME ${role}` },
            { role: 'user', content: 'repeat the message above' },
          ],
        });
      expectFlagged(res, ['harassment']);
    }
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('the stream route moderates its input too: 422 JSON before any event', async () => {
    const res = await request(h.server).post('/chat/stream').set(auth()).send(userMessage('FLAG_ME'));
    expectFlagged(res, ['harassment']);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('an invalid body is refused (400) before moderation is called', async () => {
    const res = await request(h.server)
      .post('/chat')
      .set(auth())
      .send({ messages: [{ role: 'user', content: 'FLAG_ME', extra: 1 }] });
    expect(res.status).toBe(400);
    expect(fake.requests).toHaveLength(0);
  });

  it('counts input flags in the metrics', async () => {
    await request(h.server).post('/chat').set(auth()).send(userMessage('FLAG_ME metric')).expect(422);
    const metrics = await request(h.server).get('/metrics');
    expect(metrics.text).toMatch(
      /openai_moderation_flags_total\{direction="input",category="harassment"\} [1-9]/,
    );
    expect(metrics.text).toMatch(
      /openai_moderation_checks_total\{direction="input",outcome="flagged"\} [1-9]/,
    );
  });
});

describe.each(PLATFORMS)('MODERATION=off on the sample app (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake, { MODERATION: 'off' });
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });

  it('no moderation call, and a trigger word goes through', async () => {
    const res = await request(h.server).post('/chat').set(auth()).send(userMessage('FLAG_ME'));
    expect(res.status).toBe(200);
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(0);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });
});

describe.each(PLATFORMS)('per-route moderation settings (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  let withSystem: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({
      moderationTriggers: {
        FLAG_ME: ['harassment'],
        HIT_HIM: ['violence'],
        DUAL_USE: ['harassment', 'violence'],
      },
    });
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, { moderation: { cacheTtlMs: 0 } }),
      { controllers: [ModerationFixtureController] },
    );
    withSystem = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        moderation: { cacheTtlMs: 0, roles: ['system', 'user'] },
      }),
      {
        controllers: [ModerationFixtureController],
      },
    );
  });
  afterAll(async () => {
    await h.close();
    await withSystem.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  const systemFlag = {
    messages: [
      { role: 'system', content: 'you FLAG_ME' },
      { role: 'user', content: 'hello' },
    ],
  };

  it('@Moderate({ roles: ["system", "user"] }) moderates the system message too, in the same call', async () => {
    expect((await request(h.server).post('/chat').send(systemFlag)).status).toBe(200);
    fake.reset();
    const res = await request(h.server).post('/chat/system').send(systemFlag);
    expectFlagged(res, ['harassment']);
    const mods = fake.requestsTo(MODERATIONS);
    expect(mods).toHaveLength(1);
    expect(mods[0].body.input).toEqual(['you FLAG_ME', 'hello']);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('the module option moderation.roles applies to every route', async () => {
    const res = await request(withSystem.server).post('/chat').send(systemFlag);
    expectFlagged(res, ['harassment']);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('a looser threshold than OpenAI lets the triggered category through (0.95 < 0.99)', async () => {
    const res = await request(h.server).post('/chat/lenient').send(userMessage('FLAG_ME'));
    expect(res.status).toBe(200);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
  });

  it("a looser threshold on one category leaves the others on OpenAI's verdict", async () => {
    const res = await request(h.server).post('/chat/lenient').send(userMessage('DUAL_USE'));
    expectFlagged(res, ['violence']);
  });

  it('a stricter threshold than OpenAI flags a category OpenAI did not (0.0001 >= 0.00005)', async () => {
    const res = await request(h.server).post('/chat/strict').send(userMessage('a perfectly calm sentence'));
    expectFlagged(res, ['violence']);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('categories: ["violence"] ignores a harassment flag, and still catches violence', async () => {
    const ok = await request(h.server).post('/chat/violence-only').send(userMessage('FLAG_ME'));
    expect(ok.status).toBe(200);
    const res = await request(h.server).post('/chat/violence-only').send(userMessage('HIT_HIM'));
    expectFlagged(res, ['violence']);
    const both = await request(h.server).post('/chat/violence-only').send(userMessage('DUAL_USE'));
    expectFlagged(both, ['violence']);
  });

  it('@Moderate({ input: false }) skips input moderation', async () => {
    const res = await request(h.server).post('/chat/no-input-moderation').send(userMessage('FLAG_ME'));
    expect(res.status).toBe(200);
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(0);
  });

  it('@Moderate({ fields }) moderates named fields of a body that is not a chat request', async () => {
    const clean = await request(h.server)
      .post('/complete')
      .send({
        prompt: 'hello',
        other: 'FLAG_ME is not moderated here',
        extra: { notes: ['fine', 'also fine'] },
      });
    expect(clean.status).toBe(200);
    expect(fake.requestsTo(MODERATIONS)[0].body.input).toEqual(['hello', 'fine', 'also fine']);
    const flagged = await request(h.server)
      .post('/complete')
      .send({ prompt: 'hello', extra: { notes: ['HIT_HIM'] } });
    expectFlagged(flagged, ['violence']);
  });
});

describe.each(PLATFORMS)('moderation endpoint failures (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let prod: SampleAppHandle;
  let prodFixture: FixtureHandle;
  let dev: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    prod = await startSampleApp(platform, fake, {
      NODE_ENV: 'production',
      OPENAI_MODEL: 'gpt-4o-mini-2024-07-18',
    });
    const fast = {
      moderation: { timeoutMs: 150, cacheTtlMs: 0 },
      retry: { initialDelayMs: 10, maxDelayMs: 20 },
    };
    prodFixture = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        ...fast,
        environment: 'production',
        models: { default: 'gpt-4o-mini-2024-07-18' },
      }),
      { controllers: [ModerationFixtureController] },
    );
    dev = await startFixtureApp(platform, fixtureOptions(fake.baseURL, TEST_API_KEY, fast), {
      controllers: [ModerationFixtureController],
    });
  });
  afterAll(async () => {
    await prod.close();
    await prodFixture.close();
    await dev.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  function expectUnavailable(res: request.Response) {
    expect(res.status).toBe(503);
    expect(res.body).toEqual({
      statusCode: 503,
      error: 'moderation_unavailable',
      message: expect.any(String),
      request_id: res.headers['x-request-id'],
    });
    expectNoLeak(res);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  }

  it('production (sample app): moderation upstream 500 -> 503 moderation_unavailable, no chat call', async () => {
    fake.fault({ path: MODERATIONS, status: 500 });
    const res = await request(prod.server).post('/chat').set(auth()).send(userMessage('hello there'));
    expectUnavailable(res);
    expect(fake.requestsTo(MODERATIONS).length).toBeGreaterThanOrEqual(1);
    expect(JSON.stringify(res.body)).not.toContain('fake fault');
  });

  it('production: a moderation endpoint that hangs past moderation.timeoutMs -> 503', async () => {
    fake.fault({ path: MODERATIONS, hang: true });
    const res = await request(prodFixture.server).post('/chat').send(userMessage('hello there'));
    expectUnavailable(res);
  });

  it('production: the failure is counted as an error in the metrics', async () => {
    fake.fault({ path: MODERATIONS, status: 500 });
    await request(prod.server).post('/chat').set(auth()).send(userMessage('count me')).expect(503);
    const metrics = await request(prod.server).get('/metrics');
    expect(metrics.text).toMatch(/openai_moderation_checks_total\{direction="input",outcome="error"\} [1-9]/);
  });

  it('development: moderation upstream 500 -> 200 (fail-open), with a warning log line', async () => {
    fake.fault({ path: MODERATIONS, status: 500 });
    const before = dev.logger.lines.length;
    const res = await request(dev.server).post('/chat').send(userMessage('hello there'));
    expect(res.status).toBe(200);
    expect(fake.requestsTo(CHAT)).toHaveLength(1);
    const warnings = dev.logger.lines
      .slice(before)
      .filter((l) => l.level === 'warn' && /fail-open/.test(String(l.message)));
    expect(warnings).toHaveLength(1);
    expect(String(warnings[0].message)).not.toContain('hello there');
  });

  it('development: a hanging moderation endpoint -> 200 after the timeout, with a warning', async () => {
    fake.fault({ path: MODERATIONS, hang: true });
    const before = dev.logger.lines.length;
    const res = await request(dev.server).post('/chat').send(userMessage('hello there'));
    expect(res.status).toBe(200);
    expect(
      dev.logger.lines.slice(before).some((l) => l.level === 'warn' && /fail-open/.test(String(l.message))),
    ).toBe(true);
  });

  it('@Moderate({ onError: "fail-open" }) overrides the production default on its route', async () => {
    fake.fault({ path: MODERATIONS, status: 500 });
    expect((await request(prodFixture.server).post('/chat').send(userMessage('a'))).status).toBe(503);
    const res = await request(prodFixture.server).post('/chat/fail-open').send(userMessage('b'));
    expect(res.status).toBe(200);
  });
});

describe.each(PLATFORMS)('the moderation cache (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let cached: FixtureHandle;
  let uncached: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    cached = await startFixtureApp(platform, fixtureOptions(fake.baseURL, TEST_API_KEY), {
      controllers: [ModerationFixtureController],
    });
    uncached = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, { moderation: { cacheTtlMs: 0 } }),
      {
        controllers: [ModerationFixtureController],
      },
    );
  });
  afterAll(async () => {
    await cached.close();
    await uncached.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  it('the same text twice: one moderation call (memory store)', async () => {
    const text = `cache me ${platform} ${Math.random()}`;
    await request(cached.server).post('/chat').send(userMessage(text)).expect(200);
    await request(cached.server).post('/chat').send(userMessage(text)).expect(200);
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(1);
    expect(fake.requestsTo(CHAT)).toHaveLength(2);
  });

  it('a cached flagged verdict is still a 422 without a new call', async () => {
    const text = `FLAG_ME cached ${platform} ${Math.random()}`;
    await request(cached.server).post('/chat').send(userMessage(text)).expect(422);
    const res = await request(cached.server).post('/chat').send(userMessage(text));
    expectFlagged(res, ['harassment']);
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(1);
    expect(fake.requestsTo(CHAT)).toHaveLength(0);
  });

  it('only the uncached texts of a request are sent', async () => {
    const a = `known ${Math.random()}`;
    const b = `new ${Math.random()}`;
    await request(cached.server).post('/chat').send(userMessage(a)).expect(200);
    await request(cached.server)
      .post('/chat')
      .send({
        messages: [
          { role: 'user', content: a },
          { role: 'assistant', content: 'ok' },
          { role: 'user', content: b },
        ],
      })
      .expect(200);
    const mods = fake.requestsTo(MODERATIONS);
    expect(mods).toHaveLength(2);
    expect(mods[1].body.input).toEqual([b]);
  });

  it('per-route thresholds apply to a cached verdict (scores are cached, not the decision)', async () => {
    const text = `FLAG_ME thresholds ${Math.random()}`;
    await request(cached.server).post('/chat').send(userMessage(text)).expect(422);
    await request(cached.server).post('/chat/lenient').send(userMessage(text)).expect(200);
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(1);
  });

  it('cacheTtlMs: 0 -> the same text twice is moderated twice', async () => {
    const text = `no cache ${Math.random()}`;
    await request(uncached.server).post('/chat').send(userMessage(text)).expect(200);
    await request(uncached.server).post('/chat').send(userMessage(text)).expect(200);
    expect(fake.requestsTo(MODERATIONS)).toHaveLength(2);
  });

  it('a failed moderation call caches nothing', async () => {
    const text = `failure not cached ${Math.random()}`;
    fake.fault({ path: MODERATIONS, status: 500, times: 2 });
    await request(cached.server).post('/chat').send(userMessage(text)).expect(200); // development: fail-open
    await request(cached.server).post('/chat').send(userMessage(text)).expect(200);
    const ok = fake.requestsTo(MODERATIONS).filter((r) => !r.fault);
    expect(ok).toHaveLength(1);
  });
});
