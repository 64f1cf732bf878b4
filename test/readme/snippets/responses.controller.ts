import { Body, Controller, Post, Res } from '@nestjs/common';
import {
  ModerationPipe,
  OpenAIService,
  ResponsesRequestPipe,
  clientAbortSignal,
  rawResponse,
  sendResponseStreamAsSse,
  type ResponsesRequestBody,
} from 'nestjs-openai-production';

@Controller('responses')
export class ResponsesController {
  constructor(private readonly openai: OpenAIService) {}

  @Post()
  async create(@Body(ResponsesRequestPipe, ModerationPipe) body: ResponsesRequestBody) {
    const r = await this.openai.createResponse(body);
    return { output_text: r.outputText, usage: r.usage, cost_usd: r.costUsd };
  }

  @Post('stream')
  async stream(@Body(ResponsesRequestPipe) body: ResponsesRequestBody, @Res() res: { hijack?: () => void }) {
    const stream = await this.openai.streamResponse(body, { signal: clientAbortSignal(res) });
    res.hijack?.(); // Fastify: take over the raw response
    await sendResponseStreamAsSse(stream, rawResponse(res));
  }
}
