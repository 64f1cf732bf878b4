import { Body, Controller, HttpCode, Post, Res, UseGuards } from '@nestjs/common';
import {
  ChatRequestPipe,
  OPENAI_REQUEST_ID_HEADER,
  OpenAIService,
  OpenAIThrottlerGuard,
  RequestContextStore,
  clientAbortSignal,
  rawResponse,
  sendChatStreamAsSse,
  setResponseHeader,
  type ChatRequestBody,
} from '../../lib/index.js';

@Controller('chat')
@UseGuards(OpenAIThrottlerGuard)
export class ChatController {
  constructor(private readonly openai: OpenAIService) {}

  @Post()
  @HttpCode(200)
  async chat(@Body(ChatRequestPipe) body: ChatRequestBody, @Res({ passthrough: true }) res: unknown) {
    const r = await this.openai.chat(body, { signal: clientAbortSignal(res) });
    if (r.openaiRequestId) setResponseHeader(res, OPENAI_REQUEST_ID_HEADER, r.openaiRequestId);
    return {
      id: r.completion.id,
      model: r.model,
      content: r.content,
      usage: { prompt_tokens: r.usage.prompt_tokens, completion_tokens: r.usage.completion_tokens, total_tokens: r.usage.total_tokens },
      cost_usd: r.costUsd,
      request_id: RequestContextStore.get()?.requestId,
      openai_request_id: r.openaiRequestId ?? null,
    };
  }

  @Post('stream')
  async stream(@Body(ChatRequestPipe) body: ChatRequestBody, @Res() res: { hijack?: () => void }) {
    // Errors before the first byte (400, 429, 502, 504) go through the exception filter as JSON.
    const stream = await this.openai.stream(body, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendChatStreamAsSse(stream, rawResponse(res), { summaryFields: (s) => ({ cost_usd: s.costUsd }) });
  }
}
