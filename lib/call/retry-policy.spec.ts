import { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from 'openai';
import { describe, expect, it } from 'vitest';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { isRetryable, retryDelayMs, serverRetryAfterMs } from './retry-policy.js';

const apiError = (status: number, code?: string, headers: Record<string, string> = {}) =>
  APIError.generate(
    status,
    { error: { message: 'x', type: 't', code: code ?? null, param: null } },
    undefined,
    new Headers(headers),
  );

const RETRY: ResolvedOpenAIOptions['retry'] = {
  maxRetries: 2,
  initialDelayMs: 100,
  maxDelayMs: 1_000,
  maxRetryAfterMs: 5_000,
};

describe('isRetryable', () => {
  it.each([408, 409, 429, 500, 502, 503, 504, 529])('retries HTTP %i', (status) => {
    expect(isRetryable(apiError(status))).toBe(true);
  });

  it.each([400, 401, 403, 404, 413, 422])('does not retry HTTP %i', (status) => {
    expect(isRetryable(apiError(status))).toBe(false);
  });

  it('does not retry 429 insufficient_quota, but retries 429 rate_limit_exceeded', () => {
    expect(isRetryable(apiError(429, 'insufficient_quota'))).toBe(false);
    expect(isRetryable(apiError(429, 'rate_limit_exceeded'))).toBe(true);
  });

  it('retries connection errors and connection timeouts', () => {
    expect(isRetryable(new APIConnectionError({ message: 'reset' }))).toBe(true);
    expect(isRetryable(new APIConnectionTimeoutError())).toBe(true);
  });

  it('does not retry a user abort, a plain Error or a non-error', () => {
    expect(isRetryable(new APIUserAbortError())).toBe(false);
    expect(isRetryable(new Error('boom'))).toBe(false);
    expect(isRetryable('500')).toBe(false);
    expect(isRetryable(undefined)).toBe(false);
  });
});

describe('serverRetryAfterMs', () => {
  const h = (headers: Record<string, string>) => new Headers(headers);
  const now = Date.parse('2025-01-01T00:00:00Z');

  it('is undefined without headers or without the retry headers', () => {
    expect(serverRetryAfterMs(undefined)).toBeUndefined();
    expect(serverRetryAfterMs(h({ 'x-other': '1' }))).toBeUndefined();
  });

  it('reads retry-after-ms as milliseconds, fractions included', () => {
    expect(serverRetryAfterMs(h({ 'retry-after-ms': '200' }))).toBe(200);
    expect(serverRetryAfterMs(h({ 'retry-after-ms': '12.5' }))).toBe(12.5);
    expect(serverRetryAfterMs(h({ 'retry-after-ms': '0' }))).toBe(0);
  });

  it('prefers retry-after-ms over retry-after', () => {
    expect(serverRetryAfterMs(h({ 'retry-after-ms': '150', 'retry-after': '9' }))).toBe(150);
  });

  it('reads retry-after as seconds', () => {
    expect(serverRetryAfterMs(h({ 'retry-after': '2' }))).toBe(2_000);
    expect(serverRetryAfterMs(h({ 'retry-after': '0.5' }))).toBe(500);
  });

  it('reads retry-after as an HTTP date, relative to now, never negative', () => {
    expect(serverRetryAfterMs(h({ 'retry-after': 'Wed, 01 Jan 2025 00:00:03 GMT' }), now)).toBe(3_000);
    expect(serverRetryAfterMs(h({ 'retry-after': 'Tue, 31 Dec 2024 23:59:00 GMT' }), now)).toBe(0);
    expect(serverRetryAfterMs(h({ 'retry-after': 'Wednesday, 01-Jan-25 00:00:03 GMT' }), now)).toBe(3_000); // RFC 850 form
  });

  it('falls back to retry-after when retry-after-ms is unusable', () => {
    expect(serverRetryAfterMs(h({ 'retry-after-ms': 'soon', 'retry-after': '1' }))).toBe(1_000);
    expect(serverRetryAfterMs(h({ 'retry-after-ms': '-5', 'retry-after': '1' }))).toBe(1_000);
  });

  it.each(['soon', '', '-1', 'abc 2', 'soon 5', '5 minutes', '1e3', 'NaN', 'Infinity'])(
    'ignores garbage retry-after %j',
    (value) => {
      expect(serverRetryAfterMs(h({ 'retry-after': value }), now)).toBeUndefined();
    },
  );

  it.each(['soon', '200ms', '1e3', 'Infinity'])('ignores garbage retry-after-ms %j', (value) => {
    expect(serverRetryAfterMs(h({ 'retry-after-ms': value }), now)).toBeUndefined();
  });
});

describe('retryDelayMs', () => {
  it('is exponential backoff with full jitter, capped at maxDelayMs', () => {
    const max = () => 0.999999;
    expect(retryDelayMs(1, apiError(500), RETRY, max)).toBe(100);
    expect(retryDelayMs(2, apiError(500), RETRY, max)).toBe(200);
    expect(retryDelayMs(3, apiError(500), RETRY, max)).toBe(400);
    expect(retryDelayMs(4, apiError(500), RETRY, max)).toBe(800);
    expect(retryDelayMs(5, apiError(500), RETRY, max)).toBe(1_000);
    expect(retryDelayMs(9, apiError(500), RETRY, max)).toBe(1_000);
  });

  it('scales with the random draw (jitter) and reaches 0', () => {
    expect(retryDelayMs(3, apiError(500), RETRY, () => 0.5)).toBe(200);
    expect(retryDelayMs(3, apiError(500), RETRY, () => 0)).toBe(0);
  });

  it('uses the server-directed wait instead of backoff, without jitter', () => {
    const err = apiError(429, 'rate_limit_exceeded', { 'retry-after-ms': '321' });
    expect(retryDelayMs(1, err, RETRY, () => 0)).toBe(321);
    expect(retryDelayMs(4, err, RETRY, () => 0.9)).toBe(321);
  });

  it('caps the server-directed wait at maxRetryAfterMs', () => {
    expect(retryDelayMs(1, apiError(503, undefined, { 'retry-after-ms': '60000' }), RETRY, () => 0)).toBe(
      5_000,
    );
    expect(retryDelayMs(1, apiError(503, undefined, { 'retry-after': '3600' }), RETRY, () => 0)).toBe(5_000);
  });

  it('uses backoff for errors without headers (connection errors, timeouts)', () => {
    expect(retryDelayMs(2, new APIConnectionError({ message: 'x' }), RETRY, () => 0.5)).toBe(100);
    expect(retryDelayMs(2, new Error('timeout'), RETRY, () => 0.5)).toBe(100);
  });
});
