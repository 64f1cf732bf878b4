import { APIConnectionError, APIError } from 'openai';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';

/**
 * Whether an upstream error is worth another attempt: the upstream's `x-should-retry` header when present,
 * else connection errors, timeouts, 408, 409, 429 (not `insufficient_quota`) and 5xx.
 */
export function isRetryable(err: unknown): boolean {
  if (err instanceof APIConnectionError) return true; // includes APIConnectionTimeoutError
  if (err instanceof APIError) {
    const s = err.status;
    if (s === undefined) return false;
    // OpenAI's own verdict, when it gives one (the SDK obeys it too).
    const should = err.headers?.get('x-should-retry');
    if (should === 'true') return true;
    if (should === 'false') return false;
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
  const ms = headers.get('retry-after-ms')?.trim();
  if (ms && DECIMAL.test(ms)) return Number(ms);
  const ra = headers.get('retry-after')?.trim();
  if (ra) {
    if (DECIMAL.test(ra)) return Number(ra) * 1000;
    // Date.parse accepts almost anything ("-1", "soon 5" parse as dates in 2001): only an HTTP date counts.
    const date = HTTP_DATE.test(ra) ? Date.parse(ra) : Number.NaN;
    if (!Number.isNaN(date)) return Math.max(0, date - now);
  }
  return undefined;
}

/** A non-negative decimal number of (milli)seconds, as the headers carry it. */
const DECIMAL = /^\d+(?:\.\d+)?$/;
/** The three forms of RFC 9110 HTTP-date (IMF-fixdate, RFC 850, asctime) start with the day name. */
const HTTP_DATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*,? /;

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
