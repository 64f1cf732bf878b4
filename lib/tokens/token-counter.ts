import { countTokens, encodeChat } from 'gpt-tokenizer/encoding/o200k_base';

/** A chat message as far as token counting is concerned: string content or text parts. */
export interface CountableMessage {
  role: string;
  content?: unknown;
  name?: string;
}

/** The text of a message's content: the string itself, or its text parts joined by newlines. */
export function messageText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    let out = '';
    for (const part of content) {
      if (part && typeof part === 'object' && typeof (part as { text?: unknown }).text === 'string') {
        out += (out ? '\n' : '') + (part as { text: string }).text;
      }
    }
    return out;
  }
  return '';
}

/** Tokens of a plain text with the o200k_base encoding (GPT-4o, GPT-4.1, o-series). The encoder is built once, at import. */
export function countTextTokens(text: string): number {
  return text ? countTokens(text) : 0;
}

/**
 * Prompt tokens of a chat request as OpenAI counts them for the o200k_base models: the messages in the
 * chat template, priming of the reply included. Content parts other than text are not counted.
 */
export function countChatPromptTokens(messages: readonly CountableMessage[]): number {
  const chat = messages.map((m) => ({
    role: (m.role === 'developer' ? 'system' : m.role) as 'system' | 'user' | 'assistant',
    content: messageText(m.content),
    ...(typeof m.name === 'string' ? { name: m.name } : {}),
  }));
  return encodeChat(chat, 'gpt-4o').length;
}
