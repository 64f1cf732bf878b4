/** Patterns masked in anything the library logs about a request. */
export const SECRET_PATTERNS: readonly RegExp[] = [
  /\bsk-[A-Za-z0-9_-]{8,}/g, // OpenAI keys (sk-..., sk-proj-..., sk-svcacct-...)
  /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}/gi, // Authorization header values
];

/** Masks API keys and Authorization values in `text`. */
export function redactSecrets(text: string): string {
  let out = text;
  for (const re of SECRET_PATTERNS)
    out = out.replace(re, (m) => (m.startsWith('sk-') ? '[REDACTED_KEY]' : `${m.split(/\s/)[0]} [REDACTED]`));
  return out;
}

/**
 * Identifies a key without revealing it: its prefix and last four characters, e.g. `sk-proj-...abcd`.
 * Keys too short to shorten safely give `***`.
 */
export function fingerprintKey(key: string | null | undefined): string {
  if (!key || key.length < 16) return '***';
  const prefix = /^(sk-(?:proj|svcacct|admin)-|sk-)/.exec(key)?.[1] ?? '';
  return `${prefix}...${key.slice(-4)}`;
}

/** Personal data masked in logged prompts and completions, besides secrets. */
export const PERSONAL_DATA_PATTERNS: readonly RegExp[] = [
  // e-mail addresses. A match starts only where a run of address characters starts: without the
  // look-behind a long run with no '@' is rescanned from each of its characters (quadratic: ~1 s for 32k).
  /(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}/g,
  /(?<![\w])\+?\d(?:[\s().-]{0,2}\d){6,}(?![\w])/g, // phone numbers (7+ digits, separators allowed between them)
];

const globalCopies = new WeakMap<RegExp, RegExp>();
/** `re` itself when global, else a global copy (made once): a non-global pattern would mask only its first match. */
function globalOf(re: RegExp): RegExp {
  if (re.global) return re;
  let copy = globalCopies.get(re);
  if (!copy) globalCopies.set(re, (copy = new RegExp(re.source, `${re.flags}g`)));
  return copy;
}

/**
 * Masks secrets, e-mail addresses, phone numbers and any `extra` patterns in user text before it is
 * logged (prompt logging). Every match of a pattern is masked, global (`/g`) or not.
 */
export function redactText(text: string, extra: readonly RegExp[] = []): string {
  let out = redactSecrets(text);
  out = out
    .replace(PERSONAL_DATA_PATTERNS[0], '[REDACTED_EMAIL]')
    .replace(PERSONAL_DATA_PATTERNS[1], '[REDACTED_PHONE]');
  for (const re of extra) out = out.replace(globalOf(re), '[REDACTED]');
  return out;
}
