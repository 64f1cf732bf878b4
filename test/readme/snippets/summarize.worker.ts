import { Injectable } from '@nestjs/common';
import { OpenAIService } from 'nestjs-openai-production';

/** A queue worker: no HTTP request, so the user is passed explicitly; token limits and budgets still apply. */
@Injectable()
export class SummarizeWorker {
  constructor(private readonly openai: OpenAIService) {}

  async summarize(userId: string, text: string): Promise<string> {
    const r = await this.openai.chat(
      { messages: [{ role: 'user', content: `Summarize:\n${text}` }], max_tokens: 200 },
      { user: userId, route: 'worker:summarize' },
    );
    return r.content ?? '';
  }
}
