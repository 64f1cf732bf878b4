import { Body, Controller, Post, UseGuards } from '@nestjs/common';
import {
  ChatRequestPipe,
  ModerationPipe,
  OpenAIService,
  OpenAIThrottlerGuard,
  type ChatRequestBody,
} from 'nestjs-openai-production';

@Controller('chat')
@UseGuards(OpenAIThrottlerGuard) // after your auth guard: limits apply to req.user, else to the client IP
export class ChatController {
  constructor(private readonly openai: OpenAIService) {}

  @Post()
  async chat(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    const r = await this.openai.chat(body);
    return { content: r.content, usage: r.usage, cost_usd: r.costUsd, openai_request_id: r.openaiRequestId };
  }
}
