import 'reflect-metadata';
import { Body, Controller, HttpCode, Post, Res } from '@nestjs/common';
import type request from 'supertest';
import {
  ChatRequestPipe,
  Moderate,
  ModerationPipe,
  OpenAIService,
  RequestContextStore,
  clientAbortSignal,
  rawResponse,
  sendChatStreamAsSse,
  type ChatRequestBody,
  type ChatResult,
} from '../../lib/index.js';

function reply(r: ChatResult) {
  return {
    content: r.content,
    usage: r.usage,
    request_id: RequestContextStore.get()?.requestId,
    ...(r.outputModeration ? { output_moderation: r.outputModeration } : {}),
  };
}

/**
 * Chat routes the way a user wires moderation: `@Body(ChatRequestPipe, ModerationPipe)`, with a
 * different `@Moderate({...})` per route.
 */
@Controller()
export class ModerationFixtureController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat(
    @Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody,
    @Res({ passthrough: true }) res: unknown,
  ) {
    return reply(await this.openai.chat(body, { signal: clientAbortSignal(res) }));
  }

  @Post('chat/system')
  @HttpCode(200)
  @Moderate({ roles: ['system', 'user'] })
  async system(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return reply(await this.openai.chat(body));
  }

  @Post('chat/violence-only')
  @HttpCode(200)
  @Moderate({ categories: ['violence'] })
  async violenceOnly(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return reply(await this.openai.chat(body));
  }

  /** Looser than OpenAI: harassment needs a score of 0.99 (the fake gives 0.95). */
  @Post('chat/lenient')
  @HttpCode(200)
  @Moderate({ thresholds: { harassment: 0.99 } })
  async lenient(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return reply(await this.openai.chat(body));
  }

  /** Stricter than OpenAI: violence counts from 0.00005 (the fake gives every clean category 0.0001). */
  @Post('chat/strict')
  @HttpCode(200)
  @Moderate({ thresholds: { violence: 0.00005 } })
  async strict(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return reply(await this.openai.chat(body));
  }

  /** Input moderation fails open on this route whatever the module says. */
  @Post('chat/fail-open')
  @HttpCode(200)
  @Moderate({ onError: 'fail-open' })
  async failOpen(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return reply(await this.openai.chat(body));
  }

  @Post('chat/no-input-moderation')
  @HttpCode(200)
  @Moderate({ input: false })
  async noInput(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return reply(await this.openai.chat(body));
  }

  @Post('chat/moderated')
  @HttpCode(200)
  @Moderate({ output: true })
  async moderated(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return reply(await this.openai.chat(body));
  }

  /** Route-level categories apply to the output check too. */
  @Post('chat/moderated/violence-only')
  @HttpCode(200)
  @Moderate({ categories: ['violence'], output: true })
  async moderatedViolenceOnly(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {
    return reply(await this.openai.chat(body));
  }

  @Post('chat/moderated/stream')
  @Moderate({ output: true })
  async moderatedStream(
    @Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody,
    @Res() res: { hijack?: () => void },
  ) {
    const stream = await this.openai.stream(body, { signal: clientAbortSignal(res) });
    res.hijack?.();
    await sendChatStreamAsSse(stream, rawResponse(res), { summaryFields: (s) => ({ cost_usd: s.costUsd }) });
  }

  /** A body that is not a chat request: only `prompt` is moderated. */
  @Post('complete')
  @HttpCode(200)
  @Moderate({ fields: ['prompt', 'extra.notes'] })
  complete(@Body(ModerationPipe) body: { prompt: string }) {
    return { ok: true, prompt_length: body.prompt.length };
  }
}

/** Reads an SSE body with supertest: `.buffer(true).parse(sseParser)`. */
export function sseParser(res: request.Response, cb: (err: Error | null, body: string) => void): void {
  let data = '';
  res.on('data', (c: Buffer) => (data += c.toString()));
  res.on('end', () => cb(null, data));
}

/** The `data:` payloads of an SSE body, in order. */
export function sseEvents(body: string): string[] {
  return body
    .split('\n\n')
    .filter((e) => e.trim() !== '')
    .map((e) => e.replace(/^data: /, ''));
}

/** The body of the error contract, checked strictly: never a stack or an echoed body. */
export function expectNoLeak(res: request.Response): void {
  if (!res.text) return;
  if (/\bat \S+ \(|\.ts:\d+|node_modules/.test(res.text))
    throw new Error(`response leaks a stack trace: ${res.text.slice(0, 300)}`);
}
