import { HttpStatus } from '@nestjs/common';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';
import type { InputLimitsOptions } from '../options/openai-module-options.interface.js';
import { promptTokensOf } from '../tokens/prompt-token-cache.js';
import { messageText, type CountableChatMessage } from '../tokens/token-counter.js';

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
