import { createHash } from 'node:crypto';

/**
 * The identifier sent to OpenAI for an end user: hex SHA-256 of `salt + ':' + user`, 64 characters.
 * OpenAI uses it for abuse monitoring; the hash keeps the user's own ID (often an e-mail) private.
 */
export function hashUserId(user: string, salt: string): string {
  const key = `${salt}:${user}`;
  let hash = recent.get(key);
  if (hash === undefined) {
    hash = createHash('sha256').update(key).digest('hex');
    // A small bounded memo: the same users call again and again; SHA-256 costs ~10 µs a call.
    if (recent.size >= 10_000) recent.delete(recent.keys().next().value as string);
    recent.set(key, hash);
  }
  return hash;
}

const recent = new Map<string, string>();
