import { Body, Controller, HttpCode, Post, Res, UseGuards } from '@nestjs/common';
import {
  ChatRequestPipe,
  Moderate,
  ModerationPipe,
  OPENAI_REQUEST_ID_HEADER,
  OpenAIService,
  OpenAIThrottlerGuard,
  RequestContextStore,
  clientAbortSignal,
  rawResponse,
  sendChatStreamAsSse,
  setResponseHeader,
  type ChatRequestBody,
  type ChatResult,
} from '../../lib/index.js';

/**
 * Chat routes: per-user request limits (guard), body validation and input caps, input moderation
 * (pipes), then one call through the service (token limits, budget, retries, fallbacks, usage).
 */
@Controller('chat')
@UseGuards(OpenAIThrottlerGuard)
export class ChatController {
  constructor(private readonly openai: OpenAIService) {}

  @Post()
  @HttpCode(200)
  async chat(
    @Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody,
    @Res({ passthrough: true }) res: unknown,
  ) {
    return this.reply(await this.openai.chat(body, { signal: clientAbortSignal(res) }), res);
  }

  /** Like POST /chat, and the completion is moderated too: a flagged one is replaced by a safe message. */
  @Post('moderated')
  @HttpCode(200)
  @Moderate({ output: true })
  async moderated(
    @Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody,
    @Res({ passthrough: true }) res: unknown,
  ) {
    return this.reply(await this.openai.chat(body, { signal: clientAbortSignal(res) }), res);
  }

  @Post('stream')
  async stream(
    @Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody,
    @Res() res: { hijack?: () => void },
  ) {
    // Errors before the first byte (400, 413, 422, 429, 502, 504) go through the exception filter as JSON.
    const stream = await this.openai.stream(body, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendChatStreamAsSse(stream, rawResponse(res), { summaryFields: (s) => ({ cost_usd: s.costUsd }) });
  }

  private reply(r: ChatResult, res: unknown) {
    if (r.openaiRequestId) setResponseHeader(res, OPENAI_REQUEST_ID_HEADER, r.openaiRequestId);
    if (r.cached) setResponseHeader(res, 'x-cache', 'hit');
    return {
      id: r.completion.id,
      model: r.model,
      content: r.content,
      usage: {
        prompt_tokens: r.usage.prompt_tokens,
        completion_tokens: r.usage.completion_tokens,
        total_tokens: r.usage.total_tokens,
      },
      cost_usd: r.costUsd,
      request_id: RequestContextStore.get()?.requestId,
      openai_request_id: r.openaiRequestId ?? null,
      ...(r.fallbackFrom ? { fallback_from: r.fallbackFrom } : {}),
      ...(r.outputModeration ? { output_moderation: r.outputModeration } : {}),
    };
  }
}
