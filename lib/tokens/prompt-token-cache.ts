import { countChatPromptTokens, type CountableChatMessage } from './token-counter.js';

// The input-caps pipe and the service both count a request's prompt: the service must count what it
// actually sends (a controller may add or change messages after the pipe), so nothing is keyed on the
// array's identity. Instead each message text's count is cached on the text itself, so a text counted by
// the pipe costs the service a map lookup (V8 keeps a string's hash on the string). Bounded by entries
// and by characters held.
const MAX_ENTRIES = 1024;
const MAX_CHARS = 2_000_000;
const counted = new Map<string, number>();
let heldChars = 0;

/** Tokens of one text (o200k_base), cached on its content. */
export function cachedTextTokens(text: string, count: (t: string) => number): number {
  const known = counted.get(text);
  if (known !== undefined) return known;
  const n = count(text);
  if (text.length <= MAX_CHARS / 4) {
    counted.set(text, n);
    heldChars += text.length;
    while (counted.size > MAX_ENTRIES || heldChars > MAX_CHARS) {
      const oldest = counted.keys().next().value as string;
      counted.delete(oldest);
      heldChars -= oldest.length;
    }
  }
  return n;
}

/** Prompt tokens of `messages` as they are now (per-text counts cached on content). */
export function promptTokensOf(messages: readonly CountableChatMessage[]): number {
  return countChatPromptTokens(messages, cachedTextTokens);
}
