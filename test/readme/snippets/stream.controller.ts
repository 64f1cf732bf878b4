import { Body, Controller, Post, Res } from '@nestjs/common';
import {
  ChatRequestPipe,
  OpenAIService,
  clientAbortSignal,
  rawResponse,
  sendChatStreamAsSse,
  type ChatRequestBody,
} from 'nestjs-openai-production';

@Controller('chat')
export class StreamController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('stream')
  async stream(@Body(ChatRequestPipe) body: ChatRequestBody, @Res() res: { hijack?: () => void }) {
    // Limits, budget, retries and fallbacks happen here; errors still become JSON responses.
    const stream = await this.openai.stream(body, { signal: clientAbortSignal(res) });
    res.hijack?.(); // Fastify: take over the raw response
    await sendChatStreamAsSse(stream, rawResponse(res), { summaryFields: (s) => ({ cost_usd: s.costUsd }) });
  }
}
