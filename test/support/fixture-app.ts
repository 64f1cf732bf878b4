import 'reflect-metadata';
import {
  Body,
  Controller,
  Get,
  HttpCode,
  Post,
  Res,
  type DynamicModule,
  type INestApplication,
  type Provider,
  type Type,
} from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import type request from 'supertest';
import {
  OPENAI_CALL_HOOKS,
  OPENAI_REQUEST_ID_HEADER,
  OpenAIExceptionFilter,
  OpenAIModule,
  OpenAIService,
  RequestContextStore,
  clientAbortSignal,
  rawResponse,
  sendChatStreamAsSse,
  setResponseHeader,
  type ChatRequest,
  type OpenAICallHook,
  type OpenAIModuleOptions,
} from '../../lib/index.js';
import { CapturingLogger } from './capturing-logger.js';
import type { Platform } from './sample-app.js';

export { PLATFORMS, TEST_API_KEY, type Platform } from './sample-app.js';

/**
 * A minimal app around `OpenAIModule`: `POST /chat` passes the body as is to `OpenAIService.chat()`
 * (no body schema, so model and max_tokens reach the policy), `POST /chat/stream` streams it as SSE,
 * `GET /boom` throws a plain Error. Errors go through `OpenAIExceptionFilter`.
 */
@Controller()
export class FixtureController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat(@Body() body: ChatRequest, @Res({ passthrough: true }) res: unknown) {
    const r = await this.openai.chat(body, { signal: clientAbortSignal(res) });
    if (r.openaiRequestId) setResponseHeader(res, OPENAI_REQUEST_ID_HEADER, r.openaiRequestId);
    return {
      model: r.model,
      fallback_from: r.fallbackFrom ?? null,
      attempts: r.attempts,
      content: r.content,
      usage: r.usage,
      request_id: RequestContextStore.get()?.requestId,
      openai_request_id: r.openaiRequestId ?? null,
    };
  }

  @Post('chat/stream')
  async stream(@Body() body: ChatRequest, @Res() res: { hijack?: () => void }) {
    const stream = await this.openai.stream(body, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendChatStreamAsSse(stream, rawResponse(res));
  }

  @Get('boom')
  boom(): never {
    throw new Error('database password is hunter2 at /srv/app/secret.ts:42');
  }
}

export interface FixtureOptions {
  controllers?: Type[];
  providers?: Provider[];
  imports?: Array<Type | DynamicModule>;
  /** The OpenAIModule import; default `OpenAIModule.forRoot(options)`. */
  openai?: DynamicModule;
  /** Replaces the module's call hooks (to observe reservations, settlements and releases). */
  hooks?: OpenAICallHook[];
}

export interface FixtureHandle {
  app: INestApplication;
  server: ReturnType<INestApplication['getHttpServer']>;
  logger: CapturingLogger;
  openai: OpenAIService;
  close(): Promise<void>;
}

/** Module options for a fixture pointed at `baseURL`, with small retry waits; `environment: 'development'`. */
export function fixtureOptions(
  baseURL: string,
  apiKey: OpenAIModuleOptions['apiKey'],
  extra: OpenAIModuleOptions = {},
): OpenAIModuleOptions {
  return {
    environment: 'development',
    apiKey,
    baseURL,
    ...extra,
    retry: { initialDelayMs: 10, maxDelayMs: 20, ...extra.retry },
    timeouts: { attemptMs: 5_000, deadlineMs: 15_000, ...extra.timeouts },
  };
}

/** Starts (without listening) a fixture app on `platform`. */
export async function startFixtureApp(
  platform: Platform,
  options: OpenAIModuleOptions,
  fixture: FixtureOptions = {},
): Promise<FixtureHandle> {
  const logger = new CapturingLogger();
  const builder = Test.createTestingModule({
    imports: [fixture.openai ?? OpenAIModule.forRoot({ ...options }), ...(fixture.imports ?? [])],
    controllers: fixture.controllers ?? [FixtureController],
    providers: [{ provide: APP_FILTER, useClass: OpenAIExceptionFilter }, ...(fixture.providers ?? [])],
  });
  if (fixture.hooks) builder.overrideProvider(OPENAI_CALL_HOOKS).useValue(fixture.hooks);
  const moduleRef = await builder.setLogger(logger).compile();
  const app =
    platform === 'fastify'
      ? moduleRef.createNestApplication<NestFastifyApplication>(new FastifyAdapter(), { logger })
      : moduleRef.createNestApplication({ logger });
  await app.init();
  if (platform === 'fastify') await (app as NestFastifyApplication).getHttpAdapter().getInstance().ready();
  return {
    app,
    server: app.getHttpServer(),
    logger,
    openai: app.get(OpenAIService),
    close: () => app.close(),
  };
}

/** Reads an SSE response body with supertest: `.buffer(true).parse(sseText)`. */
export function sseText(res: request.Response, cb: (err: Error | null, body: string) => void): void {
  let data = '';
  res.on('data', (c: Buffer) => (data += c.toString()));
  res.on('end', () => cb(null, data));
}

/** The `data:` payloads of an SSE body, in order. */
export function sseEvents(body: string): string[] {
  return body
    .split('\n\n')
    .filter((e) => e.trim() !== '')
    .map((e) => e.replace(/^data: /, ''));
}
