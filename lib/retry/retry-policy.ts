import { APIConnectionError, APIError } from 'openai';
import type { ResolvedOpenAIOptions } from '../interfaces/openai-module-options.interface.js';

/** Whether an upstream error is worth another attempt: connection errors, timeouts, 408, 409, 429 (not quota), 5xx. */
export function isRetryable(err: unknown): boolean {
  if (err instanceof APIConnectionError) return true; // includes APIConnectionTimeoutError
  if (err instanceof APIError) {
    const s = err.status;
    if (s === undefined) return false;
    if (s === 429) return err.code !== 'insufficient_quota';
    return s === 408 || s === 409 || s >= 500;
  }
  return false;
}

/**
 * The wait the server asked for, from `retry-after-ms` (ms) or `retry-after` (seconds or an HTTP date),
 * or `undefined` when it asked for none.
 */
export function serverRetryAfterMs(headers: Headers | undefined, now = Date.now()): number | undefined {
  if (!headers) return undefined;
  const ms = headers.get('retry-after-ms');
  if (ms !== null) {
    const v = Number.parseFloat(ms);
    if (Number.isFinite(v) && v >= 0) return v;
  }
  const ra = headers.get('retry-after');
  if (ra !== null) {
    const secs = Number.parseFloat(ra);
    if (Number.isFinite(secs) && secs >= 0) return secs * 1000;
    const date = Date.parse(ra);
    if (!Number.isNaN(date)) return Math.max(0, date - now);
  }
  return undefined;
}

/**
 * Wait before retry number `retry` (1-based): the server's wait capped at `maxRetryAfterMs` when it gave
 * one, else exponential backoff with full jitter, `random(0, min(maxDelayMs, initialDelayMs * 2^(retry-1)))`.
 */
export function retryDelayMs(
  retry: number,
  err: unknown,
  opts: ResolvedOpenAIOptions['retry'],
  random: () => number = Math.random,
): number {
  const server = err instanceof APIError ? serverRetryAfterMs(err.headers) : undefined;
  if (server !== undefined) return Math.min(server, opts.maxRetryAfterMs);
  const ceiling = Math.min(opts.maxDelayMs, opts.initialDelayMs * 2 ** (retry - 1));
  return Math.round(random() * ceiling);
}
