import { HttpStatus, Inject, Injectable, Optional, type PipeTransform } from '@nestjs/common';
import type { ZodType } from 'zod';
import { ChatRequestSchema, type ChatRequestBody } from '../dto/chat-request.schema.js';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';
import type {
  InputLimitsOptions,
  ResolvedOpenAIOptions,
} from '../interfaces/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';
import { RefusalRecorder } from '../call/refusal.recorder.js';
import { messageText, type CountableChatMessage } from '../tokens/token-counter.js';
import { promptTokensOf } from '../tokens/prompt-token-cache.js';

/** 400 for a body that does not match the schema. `issues` names paths and rules, never the values sent. */
export class InvalidBodyException extends OpenAIHttpException {
  constructor(message: string, issues: Array<{ path: string; message: string }>) {
    super(HttpStatus.BAD_REQUEST, 'invalid_body', message, { extra: { issues } });
  }
}

/** 413: the request is over an input cap (`limit` names which: `maxMessages`, `maxChars`, `maxPromptTokens`). */
export class InputTooLargeException extends OpenAIHttpException {
  constructor(limit: keyof InputLimitsOptions, value: number, max: number) {
    const what = limit === 'maxMessages' ? 'messages' : limit === 'maxChars' ? 'characters' : 'prompt tokens';
    super(
      HttpStatus.PAYLOAD_TOO_LARGE,
      'input_too_large',
      `The request has ${value} ${what}, over the limit of ${max} (${limit})`,
      { extra: { limit, max } },
    );
  }
}

const clip = (s: string, max = 120) => (s.length > max ? `${s.slice(0, max)}...` : s);

/** Validates a body against a zod schema compiled once; throws `InvalidBodyException` (400). */
export function parseBody<T>(schema: ZodType<T>, value: unknown): T {
  if (value === undefined || value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidBodyException('Body must be a JSON object', []);
  }
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  // zod quotes unknown keys in its messages, and a key can be most of the body: clip what is echoed.
  const issues = result.error.issues
    .slice(0, 10)
    .map((i) => ({ path: clip(i.path.map(String).join('.') || '(body)'), message: clip(i.message) }));
  throw new InvalidBodyException(
    `Invalid body: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`,
    issues,
  );
}

/**
 * Enforces the input caps on a validated chat body, cheapest first (messages, characters, then prompt
 * tokens with the tokenizer), so an oversize body is refused before tokenizing it.
 * @throws InputTooLargeException (413)
 */
export function enforceInputLimits(
  body: { messages: ReadonlyArray<{ role?: string; content?: unknown }> },
  limits: Required<InputLimitsOptions>,
): number {
  const messages = body.messages;
  if (messages.length > limits.maxMessages)
    throw new InputTooLargeException('maxMessages', messages.length, limits.maxMessages);
  let chars = 0;
  for (const m of messages) chars += messageText(m.content).length;
  if (chars > limits.maxChars) throw new InputTooLargeException('maxChars', chars, limits.maxChars);
  const tokens = promptTokensOf(messages as readonly CountableChatMessage[]);
  if (tokens > limits.maxPromptTokens)
    throw new InputTooLargeException('maxPromptTokens', tokens, limits.maxPromptTokens);
  return tokens;
}

/**
 * Validates a chat body (shape, roles, text-only content, no unknown parameters such as `logprobs`,
 * `logit_bias` or `n`) and enforces the input caps of the module's `input` options.
 * @example @Post('chat') chat(@Body(ChatRequestPipe) body: ChatRequestBody) {}
 * @throws InvalidBodyException (400), InputTooLargeException (413)
 */
@Injectable()
export class ChatRequestPipe implements PipeTransform<unknown, ChatRequestBody> {
  constructor(
    @Optional() @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options?: ResolvedOpenAIOptions,
    @Optional() private readonly refusals?: RefusalRecorder,
  ) {}

  transform(value: unknown): ChatRequestBody {
    const body = parseBody(ChatRequestSchema, value);
    try {
      if (this.options) enforceInputLimits(body, this.options.input);
    } catch (err) {
      throw this.refusals ? this.refusals.record(err) : err;
    }
    return body;
  }
}
