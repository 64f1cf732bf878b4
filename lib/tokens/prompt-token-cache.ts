import { countChatPromptTokens, type CountableChatMessage } from './token-counter.js';

// Prompt tokens already counted for a messages array (by the input-caps pipe), so the service does not
// tokenize the same prompt twice (a caller that mutates the array after a call must pass a new one). Keyed by the array itself: gone with it.
const counted = new WeakMap<object, number>();

/** Prompt tokens of `messages`, counted once per array. */
export function promptTokensOf(messages: readonly CountableChatMessage[]): number {
  const known = counted.get(messages);
  if (known !== undefined) return known;
  const tokens = countChatPromptTokens(messages);
  counted.set(messages, tokens);
  return tokens;
}
