import { Body, Controller, HttpCode, Post } from '@nestjs/common';
import { OpenAIService, type ChatRequest } from 'nestjs-openai-production';

interface ChatBody {
  messages: ChatRequest['messages'];
}

@Controller()
export class ChatController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat(
    @Body() body: ChatBody,
  ): Promise<{ content: string | null; openai_request_id: string | undefined }> {
    const r = await this.openai.chat({ messages: body.messages });
    return { content: r.content, openai_request_id: r.openaiRequestId };
  }

  @Post('responses')
  @HttpCode(200)
  async responses(
    @Body() body: { input: string },
  ): Promise<{ output_text: string; input_tokens: number; openai_request_id: string | undefined }> {
    const r = await this.openai.createResponse({ input: body.input });
    return {
      output_text: r.outputText,
      input_tokens: r.usage.prompt_tokens,
      openai_request_id: r.openaiRequestId,
    };
  }
}
