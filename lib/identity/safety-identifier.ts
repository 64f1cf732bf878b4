import { createHash } from 'node:crypto';

/**
 * The identifier sent to OpenAI for an end user: hex SHA-256 of `salt + ':' + user`, 64 characters.
 * OpenAI uses it for abuse monitoring; the hash keeps the user's own ID (often an e-mail) private.
 */
export function hashUserId(user: string, salt: string): string {
  return createHash('sha256').update(`${salt}:${user}`).digest('hex');
}
