import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import {
  Body,
  Controller,
  Get,
  HttpCode,
  Injectable,
  Post,
  Res,
  UnauthorizedException,
  UseGuards,
  type CanActivate,
  type DynamicModule,
  type ExecutionContext,
  type INestApplication,
  type Provider,
  type Type,
} from '@nestjs/common';
import { APP_GUARD } from '@nestjs/core';
import { SkipThrottle, Throttle } from '@nestjs/throttler';
import {
  OPENAI_STORE,
  OpenAIService,
  OpenAIThrottlerGuard,
  RateLimitService,
  RequestContextStore,
  clientAbortSignal,
  type ChatRequest,
  type OpenAIModuleOptions,
  type OpenAIStore,
} from '../../lib/index.js';
import { trackerKey } from '../../lib/storage/openai-store.interface.js';
import {
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
  type Platform,
} from '../support/fixture-app.js';

/** Bearer tokens of the fixture apps and the users they stand for. */
export const FIXTURE_USERS: Record<string, string> = Object.fromEntries(
  ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi'].map((name) => [`${name}-token`, name]),
);

/**
 * The fixture's identity: `Authorization: Bearer <token>` from FIXTURE_USERS sets `req.user` and the
 * request context's user; no header: anonymous (tracked by IP); an unknown token: 401.
 */
@Injectable()
export class FixtureAuthGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const req = context
      .switchToHttp()
      .getRequest<{ headers: Record<string, string | undefined>; user?: { id: string } }>();
    const header = req.headers.authorization;
    if (!header) return true;
    const user = FIXTURE_USERS[/^Bearer\s+(\S+)$/i.exec(header)?.[1] ?? ''];
    if (!user) throw new UnauthorizedException('Unknown bearer token');
    req.user = { id: user };
    const ctx = RequestContextStore.fromRequest(req);
    if (ctx) ctx.user = user;
    return true;
  }
}

/** Routes behind `OpenAIThrottlerGuard` (on the controller). */
@Controller()
@UseGuards(OpenAIThrottlerGuard)
export class LimitedController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat(@Body() body: ChatRequest, @Res({ passthrough: true }) res: unknown) {
    const r = await this.openai.chat(body, { signal: clientAbortSignal(res) });
    return { content: r.content, usage: r.usage };
  }

  @Get('ping')
  ping() {
    return { ok: true, user: RequestContextStore.get()?.user ?? null };
  }

  @Get('public')
  publicRoute() {
    return { ok: true };
  }
}

/** Routes with `@Throttle`/`@SkipThrottle` for a `minute` window (apps with a `minute` window only: the guard checks the names at boot). */
@Controller()
@UseGuards(OpenAIThrottlerGuard)
export class OverrideController {
  @Throttle({ minute: { limit: 2, ttl: 60_000 } })
  @Get('strict')
  strict() {
    return { ok: true };
  }

  @Throttle({ minute: { limit: 100, ttl: 1_000 } })
  @Get('short-window')
  shortWindow() {
    return { ok: true };
  }

  @SkipThrottle()
  @Get('free')
  free() {
    return { ok: true };
  }
}

/** `@SkipThrottle({ burst: true })`, for apps with a `burst` window. */
@Controller()
@UseGuards(OpenAIThrottlerGuard)
export class SkipBurstController {
  @SkipThrottle({ burst: true })
  @Get('no-burst')
  noBurst() {
    return { ok: true };
  }
}

/** A route with the guard on it, for apps that also have it as APP_GUARD. */
@Controller('double')
@UseGuards(OpenAIThrottlerGuard)
export class DoubleGuardedController {
  @Get()
  get() {
    return { ok: true };
  }
}

export interface ThrottlingAppOptions {
  /** Also register `OpenAIThrottlerGuard` as APP_GUARD (after the auth guard). */
  globalGuard?: boolean;
  controllers?: Type[];
  providers?: Provider[];
  /** More modules of the app (e.g. `ThrottlerModule`). */
  imports?: Array<Type | DynamicModule>;
}

/** A fixture app with FixtureAuthGuard (global) and LimitedController, pointed at the fake upstream. */
export function startThrottlingApp(
  platform: Platform,
  baseURL: string,
  options: OpenAIModuleOptions,
  app: ThrottlingAppOptions = {},
): Promise<FixtureHandle> {
  return startFixtureApp(platform, fixtureOptions(baseURL, 'sk-test-throttling', options), {
    controllers: app.controllers ?? [LimitedController],
    providers: [
      { provide: APP_GUARD, useClass: FixtureAuthGuard },
      ...(app.globalGuard ? [{ provide: APP_GUARD, useClass: OpenAIThrottlerGuard }] : []),
      ...(app.providers ?? []),
    ],
    imports: app.imports,
  });
}

/** Sample users no other test shares (the sample keys limits by user name, in a possibly shared Redis). */
export function uniqueSampleUsers(): { env: { SAMPLE_USERS: string }; alice: string; bob: string } {
  const tag = randomBytes(4).toString('hex');
  const alice = `alice-${tag}`;
  const bob = `bob-${tag}`;
  return { env: { SAMPLE_USERS: `${alice}:alice-token,${bob}:bob-token` }, alice, bob };
}

/** Requests counted so far for `tracker` (e.g. `user:alice`) in `windows`, read without counting. */
export async function requestsUsed(
  app: INestApplication,
  tracker: string,
  windows: Array<{ name: string; limit: number; ttl: number }>,
): Promise<number[]> {
  const store = app.get<OpenAIStore>(OPENAI_STORE);
  const r = await store.consume(
    trackerKey(tracker, 'rl:req'),
    windows.map((w) => ({ name: w.name, limit: w.limit, windowMs: w.ttl })),
    0,
  );
  return r.windows.map((w) => w.used);
}

/** Tokens counted so far for `user` in its token windows, read without counting (a reservation of 0). */
export async function tokensUsed(app: INestApplication, user: string): Promise<number> {
  const limits = app.get(RateLimitService);
  const { tokens } = await limits.limitsFor(user);
  const r = await limits.reserveTokens(user, 0, tokens);
  return r.windows[0].used;
}

export interface FloodResult {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
}

/** Sends `n` requests at once to `url` (a listening app) and collects every answer. */
export async function flood(
  url: string,
  n: number,
  init: (i: number) => RequestInit,
): Promise<FloodResult[]> {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const res = await fetch(url, init(i));
      const text = await res.text();
      let body: Record<string, unknown> = {};
      try {
        body = JSON.parse(text) as Record<string, unknown>;
      } catch {
        body = { raw: text };
      }
      return { status: res.status, headers: res.headers, body };
    }),
  );
}

/** `http://127.0.0.1:<port>` of an app listening on an ephemeral loopback port. */
export async function listen(app: INestApplication): Promise<string> {
  // The app is initialised already; listen on its Node server directly, with a backlog that takes a
  // flood of simultaneous connections (Node's default of 511 makes the kernel drop SYNs, retried after 1 s).
  const server = app.getHttpServer() as import('node:http').Server;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: 0, host: '127.0.0.1', backlog: 2_048 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as { port: number };
  return `http://127.0.0.1:${addr.port}`;
}

export const chatBody = (content = 'hi', extra: Record<string, unknown> = {}) =>
  JSON.stringify({ messages: [{ role: 'user', content }], ...extra });
export const jsonHeaders = (token?: string, extra: Record<string, string> = {}) => ({
  'content-type': 'application/json',
  ...(token ? { authorization: `Bearer ${token}` } : {}),
  ...extra,
});
