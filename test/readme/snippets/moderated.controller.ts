import { Body, Controller, Post } from '@nestjs/common';
import {
  ChatRequestPipe,
  Moderate,
  ModerationPipe,
  OpenAIService,
  type ChatRequestBody,
} from 'nestjs-openai-production';

@Controller('support')
export class SupportController {
  constructor(private readonly openai: OpenAIService) {}

  /** Stricter than OpenAI's own verdict on violence, and the answer is moderated too. */
  @Post()
  @Moderate({ thresholds: { violence: 0.3 }, output: true })
  async ask(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    const r = await this.openai.chat(body);
    return { content: r.content, flagged: r.outputModeration?.flagged ?? false };
  }
}
