import 'reflect-metadata';
import {
  Body,
  Controller,
  Get,
  HttpCode,
  Injectable,
  Post,
  Req,
  UseGuards,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import type OpenAI from 'openai';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  ChatRequestPipe,
  InjectOpenAI,
  ModerationPipe,
  Moderate,
  OpenAIMetricsService,
  OpenAIService,
  OpenAIThrottlerGuard,
  UsageService,
  hashUserId,
  type ChatRequestBody,
} from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';
import { metricValue } from '../support/prometheus.js';

const CHAT = '/v1/chat/completions';
const MODEL = 'gpt-4o-mini-2024-07-18';

/**
 * Auth the way Nest's JWT guide writes it: `req.user = { userId, username }` from the `x-user` header
 * (`x-account` adds an `accountId`; `x-empty-user` sets a user object without any ID). It does not touch
 * the library's request context: the library must find the user by itself.
 */
@Injectable()
class JwtLikeGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const req = context.switchToHttp().getRequest<{ headers: Record<string, string>; user?: object }>();
    const user = req.headers['x-user'];
    if (user) req.user = { userId: user, username: `name-of-${user}`, accountId: req.headers['x-account'] };
    else if (req.headers['x-empty-user']) req.user = { username: 'nobody' };
    return true;
  }
}

@Controller()
@UseGuards(JwtLikeGuard, OpenAIThrottlerGuard)
class HardeningController {
  constructor(
    private readonly openai: OpenAIService,
    @InjectOpenAI() private readonly client: OpenAI,
  ) {}

  @Post('chat')
  @HttpCode(200)
  async chat(@Body(ChatRequestPipe) body: ChatRequestBody) {
    const r = await this.openai.chat(body);
    return { content: r.content, usage: r.usage, cost_usd: r.costUsd };
  }

  /** Adds a long system prompt to the validated body in place, after the pipe counted it. */
  @Post('chat/with-system')
  @HttpCode(200)
  async withSystem(@Body(ChatRequestPipe) body: ChatRequestBody) {
    body.messages.unshift({ role: 'system', content: 'You answer briefly. '.repeat(60) });
    const r = await this.openai.chat(body);
    return { usage: r.usage };
  }

  @Post('chat/moderated')
  @HttpCode(200)
  async moderated(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return { content: (await this.openai.chat(body)).content };
  }

  @Post('chat/moderated-open')
  @HttpCode(200)
  @Moderate({ onError: 'fail-open' })
  async moderatedOpen(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return { content: (await this.openai.chat(body)).content };
  }

  @Post('embed')
  @HttpCode(200)
  async embed(@Body() body: { input: string }) {
    const r = await this.openai.embed({ input: body.input });
    return { usage: r.usage, cost_usd: r.costUsd };
  }

  /** An endpoint the service does not wrap, called on the injected client as the README recommends. */
  @Post('direct')
  @HttpCode(200)
  async direct(@Body() body: { model?: string }) {
    const r = await this.client.chat.completions.create({
      model: body.model ?? MODEL,
      messages: [{ role: 'user', content: 'hi' }],
    });
    return { id: r.id };
  }
}

/** Reads the ledger; not throttled, so a test can read it after using up a limit. */
@Controller()
@UseGuards(JwtLikeGuard)
class LedgerController {
  constructor(private readonly usage: UsageService) {}

  @Get('usage')
  async totals(@Req() req: { user?: { userId?: string } }) {
    return this.usage.totals(req.user?.userId ?? null);
  }
}

const user = (id: string) => ({ 'x-user': id });
const ask = (text: string, extra: Record<string, unknown> = {}) => ({
  messages: [{ role: 'user', content: text }],
  ...extra,
});

describe.each(PLATFORMS)('hardening on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  let n = 0;
  /** A user ID of its own for each test, so limits and ledgers start empty. */
  const fresh = () => `user-${platform}-${++n}`;

  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        limits: {
          requests: [{ name: 'minute', limit: 3, ttl: 60_000 }],
          tokens: [{ name: 'minute', limit: 400, ttl: 60_000 }],
        },
        maxTokens: { cap: 100 },
        input: { maxPromptTokens: 200 },
        moderation: { onError: 'fail-closed', cacheTtlMs: 0 },
        budgets: { user: { dailyUsd: 1 } },
      }),
      { controllers: [HardeningController, LedgerController], providers: [JwtLikeGuard] },
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
  });

  describe('1. a reply without usage is estimated, not free', () => {
    it('chat: the same tokens as the upstream would have counted, marked estimated, priced, in the ledger; warned once per model', async () => {
      const u = fresh();
      const normal = await request(h.server).post('/chat').set(user(u)).send(ask('how many tokens is this'));
      expect(normal.status).toBe(200);
      expect(normal.body.usage.estimated).toBe(false);
      fake.fault({ path: CHAT, omitUsage: true });
      const estimated = await request(h.server)
        .post('/chat')
        .set(user(u))
        .send(ask('how many tokens is this'));
      expect(estimated.status).toBe(200);
      expect(estimated.body.usage).toMatchObject({
        estimated: true,
        prompt_tokens: normal.body.usage.prompt_tokens,
        completion_tokens: normal.body.usage.completion_tokens,
        total_tokens: normal.body.usage.total_tokens,
      });
      expect(estimated.body.cost_usd).toBeGreaterThan(0);
      await request(h.server).post('/chat').set(user(u)).send(ask('again')).expect(200);
      const totals = await request(h.server).get('/usage').set(user(u));
      expect(totals.body.requests).toBe(3);
      expect(totals.body.estimated_requests).toBe(2);
      expect(totals.body.cost_usd).toBeGreaterThan(normal.body.cost_usd * 2);
      const warnings = h.logger.lines.filter((l) => JSON.stringify(l.message).includes('sent no usage'));
      expect(warnings).toHaveLength(1);
      expect(warnings[0].level).toBe('warn');
    });

    it('embeddings: prompt tokens counted locally', async () => {
      fake.fault({ path: '/v1/embeddings', omitUsage: true });
      const res = await request(h.server)
        .post('/embed')
        .set(user(fresh()))
        .send({ input: 'four words of text' });
      expect(res.status).toBe(200);
      expect(res.body.usage).toMatchObject({ estimated: true, prompt_tokens: 4, total_tokens: 4 });
      expect(res.body.cost_usd).toBeGreaterThan(0);
    });

    it('a stream that completes without its usage chunk: estimated usage', async () => {
      fake.fault({ path: CHAT, omitUsage: true });
      const stream = await h.openai.stream(ask('stream me') as never, { user: fresh() });
      let text = '';
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
      const summary = await stream.finished;
      expect(text).toBe('Echo: stream me');
      expect(summary.usage.estimated).toBe(true);
      expect(summary.usage.completion_tokens).toBeGreaterThan(0);
      expect(summary.usage.prompt_tokens).toBeGreaterThan(0);
    });
  });

  describe('2. moderation replies of unexpected shape fail through moderation.onError', () => {
    it.each([
      ['fewer results than inputs', { id: 'modr-1', model: 'omni-moderation-latest', results: [] }],
      [
        'a result without flagged or categories',
        { id: 'modr-2', model: 'omni-moderation-latest', results: [{}] },
      ],
      ['no results at all', { id: 'modr-3' }],
      [
        'a category verdict that is not a boolean',
        {
          id: 'modr-4',
          results: [{ flagged: false, categories: { hate: 'no' }, category_scores: { hate: 0.1 } }],
        },
      ],
    ])('%s: 503 moderation_unavailable when failing closed, no model call', async (_name, reply) => {
      fake.fault({ path: '/v1/moderations', replyBody: reply });
      const res = await request(h.server).post('/chat/moderated').set(user(fresh())).send(ask('hello there'));
      expect(res.status).toBe(503);
      expect(res.body.error).toBe('moderation_unavailable');
      expect(fake.requestsTo(CHAT)).toHaveLength(0);
    });

    it.each([
      ['empty categories and scores', { results: [{ flagged: false, categories: {}, category_scores: {} }] }],
      [
        'a category without its score',
        { results: [{ flagged: false, categories: { hate: false }, category_scores: {} }] },
      ],
    ])('a result that judged nothing (%s) is a failure, not clean: 503', async (_name, reply) => {
      fake.fault({ path: '/v1/moderations', replyBody: reply });
      const res = await request(h.server).post('/chat/moderated').set(user(fresh())).send(ask('hello'));
      expect(res.status).toBe(503);
      expect(res.body.error).toBe('moderation_unavailable');
      expect(fake.requestsTo(CHAT)).toHaveLength(0);
    });

    it('fail-open lets the text through, with a warning', async () => {
      fake.fault({ path: '/v1/moderations', replyBody: { results: [] } });
      const res = await request(h.server).post('/chat/moderated-open').set(user(fresh())).send(ask('hello'));
      expect(res.status).toBe(200);
      expect(h.logger.text()).toContain('moderation unavailable, input let through (fail-open)');
    });

    it('a well-formed reply still flags', async () => {
      const res = await request(h.server).post('/chat/moderated').set(user(fresh())).send(ask('FLAG_ME now'));
      expect(res.status).toBe(422);
      expect(res.body.categories).toEqual(['harassment']);
    });
  });

  describe('4. identity: one resolver for every consumer', () => {
    it('req.user = { userId } (Nest JWT guide): per-user request limits, usage, log line and safety_identifier', async () => {
      const a = fresh();
      const b = fresh();
      for (let i = 0; i < 3; i++)
        await request(h.server).post('/chat').set(user(a)).send(ask('hi')).expect(200);
      const refused = await request(h.server).post('/chat').set(user(a)).send(ask('hi'));
      expect(refused.status).toBe(429);
      // Another user from the same IP has a counter of its own.
      await request(h.server).post('/chat').set(user(b)).send(ask('hi')).expect(200);
      expect((await request(h.server).get('/usage').set(user(a))).body.requests).toBe(3);
      expect((await request(h.server).get('/usage').set(user(b))).body.requests).toBe(1);
      const sent = fake.requestsTo(CHAT);
      expect(sent.at(-1)!.body.safety_identifier).toBe(hashUserId(b, ''));
      const line = h.logger.records('openai call').at(-1);
      expect(line?.user).toBe(b);
    });

    it('a user object without id, sub or userId: warned once, limited by IP', async () => {
      await request(h.server).post('/chat').set('x-empty-user', '1').send(ask('hi')).expect(200);
      await request(h.server).post('/chat').set('x-empty-user', '1').send(ask('hi'));
      const warnings = h.logger.lines.filter((l) => String(l.message).includes('yields no user ID'));
      expect(warnings).toHaveLength(1);
    });
  });

  describe('6. the service counts the prompt it sends', () => {
    it('a system prompt added in place after the pipe: 413 from the service, no upstream call', async () => {
      const ok = await request(h.server).post('/chat').set(user(fresh())).send(ask('short question'));
      expect(ok.status).toBe(200);
      const res = await request(h.server)
        .post('/chat/with-system')
        .set(user(fresh()))
        .send(ask('short question'));
      expect(res.status).toBe(413);
      expect(res.body).toMatchObject({ error: 'input_too_large', limit: 'maxPromptTokens', max: 200 });
      expect(fake.requestsTo(CHAT)).toHaveLength(1);
    });
  });

  describe('5. SDK errors from direct client calls, through the filter', () => {
    it.each([
      [401, undefined, 502, 'upstream_auth_error'],
      [403, undefined, 502, 'upstream_auth_error'],
      [429, undefined, 502, 'upstream_error'],
      [429, 'insufficient_quota', 502, 'upstream_quota_exceeded'],
      [500, undefined, 502, 'upstream_error'],
      [404, 'model_not_found', 400, 'model_not_found'],
    ] as const)('upstream %i %s: %i %s, logged', async (status, code, expected, error) => {
      fake.fault({ path: CHAT, status, ...(code ? { errorCode: code } : {}) });
      const res = await request(h.server)
        .post('/direct')
        .set(user(fresh()))
        .set('x-request-id', `direct-${status}-${code}`)
        .send({});
      expect(res.status).toBe(expected);
      expect(res.body).toMatchObject({ statusCode: expected, error, request_id: `direct-${status}-${code}` });
      expect(res.text).not.toContain(TEST_API_KEY);
      const line = h.logger
        .records('openai call failed')
        .find((l) => l.request_id === `direct-${status}-${code}`);
      expect(line).toMatchObject({ upstream_status: status, status: expected });
      // 401/403 are errors with the key's fingerprint; never the key itself.
      const auth = status === 401 || status === 403;
      expect(line?.key).toBe(auth ? `sk-...${TEST_API_KEY.slice(-4)}` : undefined);
      expect(h.logger.text()).not.toContain(TEST_API_KEY);
    });

    it('a connection failure: 502, never 400 invalid_body', async () => {
      fake.fault({ path: CHAT, drop: true });
      const res = await request(h.server).post('/direct').set(user(fresh())).send({});
      expect(res.status).toBe(502);
      expect(res.body.error).toBe('upstream_error');
    });
  });

  describe('7. upstream text never reaches the client', () => {
    it('an upstream code and parameter shaped like nothing we redact stay in the log', async () => {
      fake.fault({
        path: CHAT,
        status: 400,
        errorCode: 'tenant-zq81-internal-ticket',
        errorMessage: 'internal ticket tenant-zq81 leaked',
      });
      const res = await request(h.server).post('/chat').set(user(fresh())).send(ask('hi'));
      expect(res.status).toBe(400);
      expect(res.text).not.toContain('zq81');
      expect(h.logger.text()).toContain('tenant-zq81-internal-ticket');
    });
  });

  describe('a stream the upstream fails is an upstream error', () => {
    it('counted in openai_upstream_errors_total and logged with its cause; a client abort is not', async () => {
      const metrics = h.app.get(OpenAIMetricsService);
      const errors = async () => metricValue(await metrics.metrics(), 'openai_upstream_errors_total');
      const before = await errors();
      fake.fault({ path: CHAT, streamFailAfterChunks: 1, errorCode: 'overloaded_xyz' });
      const stream = await h.openai.stream(ask('one two three') as never, { user: fresh() });
      await expect(
        (async () => {
          for await (const _ of stream) void _;
        })(),
      ).rejects.toMatchObject({ status: 502 });
      expect((await errors()) - before).toBe(1);
      const line = h.logger.records('openai call').at(-1);
      expect(line).toMatchObject({
        status: 'incomplete',
        error: 'upstream_stream_incomplete',
        upstream_code: 'overloaded_xyz',
      });
      expect(String(line?.cause)).toContain('The server had an error');

      fake.reset();
      const aborted = await h.openai.stream(ask('one two three four') as never, { user: fresh() });
      await expect(
        (async () => {
          for await (const _ of aborted) aborted.abort();
        })(),
      ).rejects.toMatchObject({ status: 499 });
      await expect(aborted.finished).rejects.toMatchObject({ status: 499 });
      expect((await errors()) - before).toBe(1);
    });
  });

  describe('8. every refusal is one log line and a counter by reason', () => {
    it('429, 413 and 422 each write a "request refused" line with request_id, user, route, reason and the limit', async () => {
      const u = fresh();
      const metrics = h.app.get(OpenAIMetricsService);
      const before = metricValue(await metrics.metrics(), 'openai_refusals_total', {
        reason: 'rate_limit_exceeded',
      });
      for (let i = 0; i < 3; i++)
        await request(h.server).post('/chat').set(user(u)).send(ask('hi')).expect(200);
      await request(h.server)
        .post('/chat')
        .set(user(u))
        .set('x-request-id', `refused-${u}`)
        .send(ask('hi'))
        .expect(429);
      const line = h.logger.records('request refused').find((l) => l.request_id === `refused-${u}`);
      expect(line).toMatchObject({
        user: u,
        route: 'POST /chat',
        status: 429,
        reason: 'rate_limit_exceeded',
        limit: 'minute',
      });
      const after = metricValue(await metrics.metrics(), 'openai_refusals_total', {
        reason: 'rate_limit_exceeded',
      });
      expect(after - before).toBe(1);

      const big = await request(h.server)
        .post('/chat')
        .set(user(fresh()))
        .set('x-request-id', `big-${u}`)
        .send(ask('word '.repeat(400)));
      expect(big.status).toBe(413);
      expect(h.logger.records('request refused').find((l) => l.request_id === `big-${u}`)).toMatchObject({
        reason: 'input_too_large',
        limit: 'maxPromptTokens',
      });

      const flagged = await request(h.server)
        .post('/chat/moderated')
        .set(user(fresh()))
        .set('x-request-id', `flag-${u}`)
        .send(ask('FLAG_ME'));
      expect(flagged.status).toBe(422);
      expect(h.logger.records('request refused').find((l) => l.request_id === `flag-${u}`)).toMatchObject({
        reason: 'input_flagged',
        categories: ['harassment'],
      });
    });
  });
});

describe.each(PLATFORMS)('identity options on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        identity: { resolve: (req: { user?: { accountId?: string } }) => req.user?.accountId },
        limits: {
          requests: [{ name: 'minute', limit: 2, ttl: 60_000 }],
          tokens: [{ name: 'minute', limit: 250, ttl: 60_000 }],
        },
        maxTokens: { cap: 100 },
      }),
      { controllers: [HardeningController, LedgerController], providers: [JwtLikeGuard] },
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });

  it('identity.resolve is used by the guard, the service, usage and the log line', async () => {
    // Two logins of one account share its limits; the account ID is what the library sees.
    await request(h.server)
      .post('/chat')
      .set({ 'x-user': 'login-1', 'x-account': 'acct-9' })
      .send(ask('hi'))
      .expect(200);
    await request(h.server)
      .post('/chat')
      .set({ 'x-user': 'login-2', 'x-account': 'acct-9' })
      .send(ask('hi'))
      .expect(200);
    const third = await request(h.server)
      .post('/chat')
      .set({ 'x-user': 'login-3', 'x-account': 'acct-9' })
      .send(ask('hi'));
    expect(third.status).toBe(429);
    expect(fake.requestsTo(CHAT).at(-1)!.body.safety_identifier).toBe(hashUserId('acct-9', ''));
    expect(h.logger.records('openai call').at(-1)?.user).toBe('acct-9');
    const usage = h.app.get(UsageService);
    expect((await usage.totals('acct-9')).requests).toBe(2);
  });

  it('anonymous callers are token-limited by client IP, as request limits are; the refusal is logged once', async () => {
    // 250 tokens a minute: a prompt of ~160 tokens plus max_tokens 100 can never fit.
    const res = await request(h.server)
      .post('/chat')
      .set('x-request-id', 'anon-tokens')
      .send(ask('word '.repeat(150), { max_tokens: 100 }));
    expect(res.status).toBe(413);
    expect(res.body.error).toBe('token_limit_exceeds_window');
    expect(fake.requestsTo(CHAT).some((r) => JSON.stringify(r.body).includes('word word'))).toBe(false);
    const lines = h.logger.records('request refused').filter((l) => l.request_id === 'anon-tokens');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      reason: 'token_limit_exceeds_window',
      user: expect.stringMatching(/^ip:/),
    });
    // A small anonymous call still passes.
    await request(h.server)
      .post('/chat')
      .send(ask('hi', { max_tokens: 50 }))
      .expect(200);
  });
});
