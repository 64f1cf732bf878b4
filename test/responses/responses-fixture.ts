import 'reflect-metadata';
import { Body, Controller, Headers, HttpCode, Post, Res } from '@nestjs/common';
import {
  ModerationPipe,
  OpenAIService,
  RequestContextStore,
  clientAbortSignal,
  rawResponse,
  sendResponseStreamAsSse,
  setResponseHeader,
  type CallOptions,
  type ChatRequest,
  type ResponseRequest,
  type ResponseResult,
} from '../../lib/index.js';

export const RESPONSES = '/v1/responses';
export const CHAT = '/v1/chat/completions';
export const MODERATIONS = '/v1/moderations';

/** Call options from test headers: `x-user`, `x-attempt-ms`, `x-max-retries`. */
function callOptions(headers: Record<string, string | undefined>, res: unknown): CallOptions {
  return {
    signal: clientAbortSignal(res),
    ...(headers['x-user'] ? { user: headers['x-user'] } : {}),
    ...(headers['x-attempt-ms'] ? { attemptTimeoutMs: Number(headers['x-attempt-ms']) } : {}),
    ...(headers['x-max-retries'] ? { maxRetries: Number(headers['x-max-retries']) } : {}),
  };
}

function reply(r: ResponseResult, res: unknown) {
  if (r.cached) setResponseHeader(res, 'x-cache', 'hit');
  return {
    model: r.model,
    fallback_from: r.fallbackFrom ?? null,
    attempts: r.attempts,
    output_text: r.outputText,
    status: r.response.status,
    usage: r.usage,
    cost_usd: r.costUsd,
    cached: r.cached ?? false,
    output_moderation: r.outputModeration ?? null,
    openai_request_id: r.openaiRequestId ?? null,
    request_id: RequestContextStore.get()?.requestId,
  };
}

/**
 * Responses routes the way a user wires them: `POST /responses` passes the body as is to
 * `OpenAIService.createResponse()`, `POST /responses/stream` streams it with `sendResponseStreamAsSse`;
 * `/moderated` variants add `@Body(ModerationPipe)`, `/output-moderated` ones `moderateOutput: true`.
 * `POST /chat` is there to show that both endpoints land in the same ledger and limits.
 */
@Controller()
export class ResponsesFixtureController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('responses')
  @HttpCode(200)
  async create(
    @Body() body: ResponseRequest,
    @Headers() headers: Record<string, string | undefined>,
    @Res({ passthrough: true }) res: unknown,
  ) {
    return reply(await this.openai.createResponse(body, callOptions(headers, res)), res);
  }

  @Post('responses/moderated')
  @HttpCode(200)
  async moderated(
    @Body(ModerationPipe) body: ResponseRequest,
    @Headers() headers: Record<string, string | undefined>,
    @Res({ passthrough: true }) res: unknown,
  ) {
    return reply(await this.openai.createResponse(body, callOptions(headers, res)), res);
  }

  @Post('responses/output-moderated')
  @HttpCode(200)
  async outputModerated(
    @Body() body: ResponseRequest,
    @Headers() headers: Record<string, string | undefined>,
    @Res({ passthrough: true }) res: unknown,
  ) {
    return reply(
      await this.openai.createResponse(body, { ...callOptions(headers, res), moderateOutput: true }),
      res,
    );
  }

  @Post('responses/stream')
  async stream(
    @Body() body: ResponseRequest,
    @Headers() headers: Record<string, string | undefined>,
    @Res() res: { hijack?: () => void },
  ) {
    const stream = await this.openai.streamResponse(body, callOptions(headers, res));
    res.hijack?.();
    await sendResponseStreamAsSse(stream, rawResponse(res));
  }

  @Post('responses/stream/output-moderated')
  async streamOutputModerated(
    @Body() body: ResponseRequest,
    @Headers() headers: Record<string, string | undefined>,
    @Res() res: { hijack?: () => void },
  ) {
    const stream = await this.openai.streamResponse(body, {
      ...callOptions(headers, res),
      moderateOutput: true,
    });
    res.hijack?.();
    await sendResponseStreamAsSse(stream, rawResponse(res));
  }

  @Post('chat')
  @HttpCode(200)
  async chat(
    @Body() body: ChatRequest,
    @Headers() headers: Record<string, string | undefined>,
    @Res({ passthrough: true }) res: unknown,
  ) {
    const r = await this.openai.chat(body, callOptions(headers, res));
    return { content: r.content, usage: r.usage, model: r.model, cost_usd: r.costUsd };
  }
}
