import { responsesInputMessages } from '../endpoints/responses/responses.adapter.js';
import { messageText } from '../tokens/token-counter.js';

/** Where the user-provided text of a body is. */
export interface TextSelection {
  /** Roles of the messages whose content is taken. */
  roles: readonly string[];
  /** Dotted paths of string (or string array) fields, taken instead of messages when set. */
  fields?: readonly string[];
}

function at(body: unknown, path: string): unknown {
  let cur = body;
  for (const key of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, key)) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

/** The texts of a body to moderate: the content of messages with the selected roles (text parts included), or the selected fields. */
export function extractTexts(body: unknown, sel: TextSelection): string[] {
  const out: string[] = [];
  if (sel.fields?.length) {
    for (const path of sel.fields) {
      const v = at(body, path);
      if (typeof v === 'string') out.push(v);
      else if (Array.isArray(v)) for (const x of v) if (typeof x === 'string') out.push(x);
    }
    return out;
  }
  // A chat body's `messages`, or a Responses body's `instructions` and `input` as messages.
  const raw = (body as { messages?: unknown })?.messages;
  const messages = Array.isArray(raw)
    ? raw
    : body && typeof body === 'object' && ('input' in body || 'instructions' in body)
      ? responsesInputMessages(body as { input?: unknown; instructions?: unknown })
      : undefined;
  if (!messages) return out;
  for (const m of messages) {
    if (m && typeof m === 'object' && sel.roles.includes((m as { role?: string }).role ?? '')) {
      const text = messageText((m as { content?: unknown }).content);
      if (text) out.push(text);
    }
  }
  return out;
}
