import { encode, encodeChat } from 'gpt-tokenizer/encoding/o200k_base';
import { isRecord } from '../utils/is-record.js';

// Token counting with o200k_base (GPT-4o, GPT-4.1, o-series); the encoder is built once, at import.

/**
 * The message shape {@link countChatPromptTokens} reads. OpenAI's `ChatCompletionMessageParam` is assignable to it.
 */
export interface CountableChatMessage {
  role?: string;
  /** A string, or content parts whose `text` parts are counted (joined with `\n`); `null` counts as empty. */
  content?: string | ReadonlyArray<unknown> | null;
  /** Assistant tool calls; each function call's `name` and `arguments` are counted as text. */
  tool_calls?: ReadonlyArray<unknown>;
}

/** Special-token text (e.g. `<|endoftext|>`) in user content is encoded as plain text instead of throwing. */
const ENCODE_OPTIONS = { disallowedSpecial: new Set<string>() };
/** The chat template gpt-tokenizer uses for o200k_base chat models. */
const CHAT_TEMPLATE_MODEL = 'gpt-4o';

/** Content-part types that carry text: Chat Completions' `text`, the Responses API's `input_text` / `output_text`. */
const TEXT_PART_TYPES = new Set(['text', 'input_text', 'output_text']);

/** Text of a message `content`: a string as is, text parts joined with `\n`, anything else empty. */
export function messageText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .filter(
        (p): p is { type: 'text'; text: string } =>
          isRecord(p) && TEXT_PART_TYPES.has(p.type as string) && typeof p.text === 'string',
      )
      .map((p) => p.text)
      .join('\n');
  }
  return '';
}

function toolCallsText(toolCalls: unknown): string {
  if (!Array.isArray(toolCalls)) return '';
  const parts: string[] = [];
  for (const call of toolCalls) {
    if (!isRecord(call)) continue;
    const fn = isRecord(call.function) ? call.function : isRecord(call.custom) ? call.custom : undefined;
    if (!fn) continue;
    if (typeof fn.name === 'string') parts.push(fn.name);
    if (typeof fn.arguments === 'string') parts.push(fn.arguments);
    if (typeof fn.input === 'string') parts.push(fn.input);
  }
  return parts.join('\n');
}

/**
 * Number of tokens in `text` with the o200k_base encoding (gpt-4o family). Special-token text counts as plain text.
 * This is what the fake server reports as `completion_tokens` for a reply, and per input for embeddings.
 */
export function countTextTokens(text: string): number {
  if (!text) return 0;
  if (!LONG_RUN_TEST.test(text)) return encode(text, ENCODE_OPTIONS).length;
  // Byte-pair encoding is quadratic in the length of one pre-tokenized piece, and a run without
  // whitespace (random CJK, base64, 'zzzz...') is one piece: 31k such characters block the event loop
  // for seconds. Long runs are counted in chunks, which over-counts them by at most one token per chunk
  // (the safe side for limits) and leaves ordinary text exact.
  let total = 0;
  let last = 0;
  for (const m of text.matchAll(LONG_RUN)) {
    total += encode(text.slice(last, m.index), ENCODE_OPTIONS).length;
    for (let i = 0; i < m[0].length; i += RUN_CHUNK)
      total += encode(m[0].slice(i, i + RUN_CHUNK), ENCODE_OPTIONS).length;
    last = m.index + m[0].length;
  }
  return total + encode(text.slice(last), ENCODE_OPTIONS).length;
}

/** Runs of non-whitespace this long are tokenized in chunks (see `countTextTokens`). */
const LONG_RUN_LENGTH = 256;
const RUN_CHUNK = 128;
const LONG_RUN = new RegExp(`\\S{${LONG_RUN_LENGTH},}`, 'g');
const LONG_RUN_TEST = new RegExp(`\\S{${LONG_RUN_LENGTH}}`);

/**
 * Prompt token count of a chat, as the fake server reports it in `usage.prompt_tokens`: gpt-tokenizer's chat encoding
 * with the o200k_base encoding and the gpt-4o chat template (per-message framing tokens plus the assistant priming).
 *
 * Pure and deterministic; exact for ordinary text, and bounded in time for any input (runs of 256+ characters
 * without whitespace are counted in chunks, a token or so high per chunk). Content-part arrays count their `text` parts joined with `\n` (images, audio and files add
 * nothing); assistant `tool_calls` count their function name and arguments; `name` is ignored; a missing role counts
 * as `user`; non-object entries count as empty user messages.
 */
export function countChatPromptTokens(
  messages: readonly CountableChatMessage[],
  /** Counts one text; a cache may wrap {@link countTextTokens} (it is passed as the second argument). */
  countText: (text: string, count: (t: string) => number) => number = (t, count) => count(t),
): number {
  // gpt-tokenizer's encodeChat rebuilds its special-token pattern on every call (~30 µs); the chat
  // template is additive, so the same count is the reply primer, a fixed framing per message, and each
  // content's own tokens (checked against encodeChat in the spec).
  let total = CHAT_PRIMER_TOKENS;
  for (const m of messages as readonly unknown[]) {
    if (!isRecord(m)) {
      total += framingTokens('user');
      continue;
    }
    const text = messageText(m.content);
    const tools = toolCallsText(m.tool_calls);
    const role = typeof m.role === 'string' && m.role.length > 0 ? m.role : 'user';
    total +=
      framingTokens(role) + countText(tools ? (text ? `${text}\n${tools}` : tools) : text, countTextTokens);
  }
  return total;
}

/** Tokens of `encodeChat` for an empty chat: the primer of the assistant's reply. */
const CHAT_PRIMER_TOKENS = encodeChat([], CHAT_TEMPLATE_MODEL, ENCODE_OPTIONS).length;
const framing = new Map<string, number>();

/** Template tokens around one message of `role` (its content excluded), computed once per role. */
function framingTokens(role: string): number {
  let n = framing.get(role);
  if (n === undefined) {
    n =
      encodeChat([{ role: role as 'user', content: '' }], CHAT_TEMPLATE_MODEL, ENCODE_OPTIONS).length -
      CHAT_PRIMER_TOKENS;
    if (framing.size < 64) framing.set(role, n);
  }
  return n;
}
