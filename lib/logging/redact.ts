/** Patterns masked in anything the library logs about a request. */
export const SECRET_PATTERNS: readonly RegExp[] = [
  /\bsk-[A-Za-z0-9_-]{8,}/g, // OpenAI keys (sk-..., sk-proj-..., sk-svcacct-...)
  /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}/gi, // Authorization header values
];

/** Masks API keys and Authorization values in `text`. */
export function redactSecrets(text: string): string {
  let out = text;
  for (const re of SECRET_PATTERNS) out = out.replace(re, (m) => (m.startsWith('sk-') ? '[REDACTED_KEY]' : `${m.split(/\s/)[0]} [REDACTED]`));
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
