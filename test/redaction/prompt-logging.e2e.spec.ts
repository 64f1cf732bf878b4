import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OPENAI_RESOLVED_OPTIONS, OpenAIConfigError, type ResolvedOpenAIOptions } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { ModerationFixtureController, sseParser } from '../moderation/moderation-fixture.js';

const KEY = 'sk-proj-Zq81_LEAKME-x7Yt3Kp9Wm2Vn5Bc0Ld4';
const EMAIL = 'jane.doe+billing@example-corp.com';
const PHONE = '+1 (415) 555-0134';
const LOCAL_PHONE = '555-0199';
const BEARER = 'Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu';
const TICKETS = ['ACME-482913', 'ACME-771002'];
const CODENAMES = ['project-falcon', 'project-eagle'];

const PROMPT =
  `My key is ${KEY}; write to ${EMAIL} or call ${PHONE} (desk: ${LOCAL_PHONE}). ` +
  `Header was "Authorization: ${BEARER}". Tickets ${TICKETS.join(' and ')}, codenames ${CODENAMES.join(', ')}.`;

/** Every secret or personal datum of PROMPT, and fragments of them that must not survive either. */
const FORBIDDEN = [
  KEY,
  KEY.slice(-12),
  'LEAKME',
  EMAIL,
  'jane.doe',
  'example-corp',
  PHONE,
  '555-0134',
  LOCAL_PHONE,
  'c2VjcmV0LXRva2Vu',
  ...TICKETS,
  ...CODENAMES,
  TEST_API_KEY,
];

function expectClean(text: string) {
  for (const f of FORBIDDEN) expect(text, `the logs contain "${f}"`).not.toContain(f);
}

// Nest's logger override is process-wide: the app created last receives every `new Logger()` line, so
// each describe block below creates exactly one app.
describe.each(PLATFORMS)('prompt logging with redaction (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      // One global pattern and one without /g: both must mask every match.
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        logging: { prompts: true, redact: [/ACME-\d{6}/g, /project-[a-z]+/i] },
      }),
      { controllers: [ModerationFixtureController] },
    );
  });
  afterAll(async () => {
    await h.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
    h.logger.lines.length = 0;
  });

  it('logs the prompt and the completion with keys, e-mails, phones and custom patterns masked', async () => {
    const res = await request(h.server)
      .post('/chat')
      .send({ messages: [{ role: 'user', content: PROMPT }] });
    expect(res.status).toBe(200);
    // The fake echoes the prompt: the completion carries the same data.
    expect(res.body.content).toContain(EMAIL);
    const [line] = h.logger.records('openai call').filter((l) => l.endpoint === 'chat.completions');
    expect(line).toBeDefined();
    expect(typeof line.prompt).toBe('string');
    expect(typeof line.completion).toBe('string');
    for (const field of [line.prompt, line.completion] as string[]) {
      expect(field).toContain('[REDACTED_KEY]');
      expect(field).toContain('[REDACTED_EMAIL]');
      expect(field).toContain('[REDACTED_PHONE]');
      expect(field).toContain('Bearer [REDACTED]');
      expect(field.match(/\[REDACTED\]/g)!.length).toBeGreaterThanOrEqual(
        1 + TICKETS.length + CODENAMES.length,
      );
      // What is not personal data is kept, so the log stays useful.
      expect(field).toContain('Tickets');
      expect(field).toContain('codenames');
    }
    expectClean(h.logger.text());
  });

  it('a streamed call logs the redacted prompt and completion too', async () => {
    const res = await request(h.server)
      .post('/chat/moderated/stream')
      .send({ messages: [{ role: 'user', content: PROMPT }] })
      .buffer(true)
      .parse(sseParser);
    expect(res.status).toBe(200);
    expect(res.body as string).toContain('[DONE]');
    const [line] = h.logger.records('openai call').filter((l) => l.endpoint === 'chat.completions');
    expect(line.completion).toContain('[REDACTED_EMAIL]');
    expectClean(h.logger.text());
  });

  it('multi-part content and several messages are all redacted', async () => {
    await request(h.server)
      .post('/chat')
      .send({
        messages: [
          { role: 'system', content: `Escalate to ${EMAIL}` },
          {
            role: 'user',
            content: [
              { type: 'text', text: `key ${KEY}` },
              { type: 'text', text: `call ${PHONE}` },
            ],
          },
        ],
      })
      .expect(200);
    expectClean(h.logger.text());
    const [line] = h.logger.records('openai call').filter((l) => l.endpoint === 'chat.completions');
    expect(line.prompt).toContain('[REDACTED_EMAIL]');
  });
});

describe.each(PLATFORMS)('prompt logging off (the default) (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let quiet: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    quiet = await startFixtureApp(platform, fixtureOptions(fake.baseURL, TEST_API_KEY), {
      controllers: [ModerationFixtureController],
    });
  });
  afterAll(async () => {
    await quiet.close();
    await fake.close();
  });

  it('without logging.prompts, no prompt or completion is logged at all', async () => {
    await request(quiet.server)
      .post('/chat')
      .send({ messages: [{ role: 'user', content: PROMPT }] })
      .expect(200);
    const [line] = quiet.logger.records('openai call').filter((l) => l.endpoint === 'chat.completions');
    expect(line).toBeDefined();
    expect(line.prompt).toBeUndefined();
    expect(line.completion).toBeUndefined();
    expectClean(quiet.logger.text());
    expect(quiet.logger.text()).not.toContain('Tickets');
  });
});

describe('logging.prompts in production', () => {
  let fake: FakeOpenAIServer;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterAll(async () => {
    await fake.close();
  });

  it.each([
    ['at the top level', { environment: 'production', logging: { prompts: true } }],
    [
      'in the production profile',
      { environment: 'production', profiles: { production: { logging: { prompts: true } } } },
    ],
  ])('fails at boot when set %s, naming logging.prompts', async (_where, extra) => {
    const err = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { models: { default: 'gpt-4o-mini-2024-07-18' }, ...extra }),
      {
        controllers: [ModerationFixtureController],
      },
    ).then(
      async (h) => {
        await h.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OpenAIConfigError);
    expect((err as OpenAIConfigError).problems.map((p) => p.path)).toContain('logging.prompts');
    expect(fake.requests).toHaveLength(0);
  });

  it('logging.redact entries that are not RegExps fail at boot (not at the first logged call)', async () => {
    const err = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        logging: { prompts: true, redact: ['ACME-' as unknown as RegExp] },
      }),
      {
        controllers: [ModerationFixtureController],
      },
    ).then(
      async (h) => {
        await h.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OpenAIConfigError);
    expect((err as OpenAIConfigError).problems.map((p) => p.path)).toEqual(['logging.redact']);
  });

  it('is allowed in staging (the profile a team debugs in)', async () => {
    const h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        environment: 'staging',
        models: { default: 'gpt-4o-mini-2024-07-18' },
        logging: { prompts: true },
      }),
      { controllers: [ModerationFixtureController] },
    );
    try {
      expect(h.app.get<ResolvedOpenAIOptions>(OPENAI_RESOLVED_OPTIONS).logging.prompts).toBe(true);
    } finally {
      await h.close();
    }
  });
});
