import { Body, Controller, HttpCode, Post, Res, UseGuards } from '@nestjs/common';
import {
  ModerationPipe,
  OPENAI_REQUEST_ID_HEADER,
  OpenAIService,
  OpenAIThrottlerGuard,
  RequestContextStore,
  ResponsesRequestPipe,
  clientAbortSignal,
  rawResponse,
  sendResponseStreamAsSse,
  setResponseHeader,
  type ResponseResult,
  type ResponsesRequestBody,
} from '../../lib/index.js';

/**
 * The Responses API routes, through the same pipeline as /chat: per-user request limits (guard), body
 * validation and input caps, input moderation (pipes), then one call through the service (token limits,
 * budget, retries, fallbacks, usage, cache).
 */
@Controller('responses')
@UseGuards(OpenAIThrottlerGuard)
export class ResponsesController {
  constructor(private readonly openai: OpenAIService) {}

  @Post()
  @HttpCode(200)
  async create(
    @Body(ResponsesRequestPipe, ModerationPipe) body: ResponsesRequestBody,
    @Res({ passthrough: true }) res: unknown,
  ) {
    const r = await this.openai.createResponse(body, { signal: clientAbortSignal(res) });
    return this.reply(r, res);
  }

  @Post('stream')
  async stream(
    @Body(ResponsesRequestPipe, ModerationPipe) body: ResponsesRequestBody,
    @Res() res: { hijack?: () => void },
  ) {
    // Errors before the first byte go through the exception filter as JSON.
    const stream = await this.openai.streamResponse(body, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendResponseStreamAsSse(stream, rawResponse(res), {
      summaryFields: (s) => ({ cost_usd: s.costUsd }),
    });
  }

  private reply(r: ResponseResult, res: unknown) {
    if (r.openaiRequestId) setResponseHeader(res, OPENAI_REQUEST_ID_HEADER, r.openaiRequestId);
    if (r.cached) setResponseHeader(res, 'x-cache', 'hit');
    return {
      id: r.response.id,
      model: r.model,
      output_text: r.outputText,
      usage: {
        input_tokens: r.usage.prompt_tokens,
        output_tokens: r.usage.completion_tokens,
        total_tokens: r.usage.total_tokens,
      },
      cost_usd: r.costUsd,
      request_id: RequestContextStore.get()?.requestId,
      openai_request_id: r.openaiRequestId ?? null,
      ...(r.fallbackFrom ? { fallback_from: r.fallbackFrom } : {}),
    };
  }
}
