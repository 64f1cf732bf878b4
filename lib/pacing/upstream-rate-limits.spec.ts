import { describe, expect, it } from 'vitest';
import { formatResetDuration } from '../testing/fake-openai.rate-limits.js';
import { parseResetDuration, readRateLimitHeaders } from './upstream-rate-limits.js';

describe('parseResetDuration', () => {
  it.each([
    ['12ms', 12],
    ['1s', 1_000],
    ['1.5s', 1_500],
    ['6m0s', 360_000],
    ['1h2m3s', 3_723_000],
    ['20ms', 20],
  ])('%s is %d ms', (text, ms) => expect(parseResetDuration(text)).toBe(ms));

  it.each(['', 'soon', '5', '1x', '-1s', 'ms'])('%j is not a duration', (text) =>
    expect(parseResetDuration(text)).toBeUndefined(),
  );

  it('reads what the fake server writes', () => {
    for (const ms of [0, 7, 999, 1_000, 59_999, 61_500, 3_700_000])
      expect(parseResetDuration(formatResetDuration(ms))).toBe(ms);
  });
});

describe('readRateLimitHeaders', () => {
  it('remaining counts and reset times from a reply; nothing without the headers', () => {
    const h = new Headers({
      'x-ratelimit-remaining-requests': '3',
      'x-ratelimit-remaining-tokens': '1200',
      'x-ratelimit-reset-requests': '1s',
      'x-ratelimit-reset-tokens': '6m0s',
    });
    expect(readRateLimitHeaders(h, 1_000)).toEqual({
      remainingRequests: 3,
      remainingTokens: 1200,
      resetRequestsAt: 2_000,
      resetTokensAt: 361_000,
    });
    expect(readRateLimitHeaders(new Headers(), 0)).toBeUndefined();
  });
});

describe('parseResetDuration bounds', () => {
  it('a reset longer than a day is no information (a hostile or broken upstream cannot pin a model)', () => {
    expect(parseResetDuration('99999999h')).toBeUndefined();
    expect(parseResetDuration('25h')).toBeUndefined();
    expect(parseResetDuration('24h')).toBe(86_400_000);
    expect(parseResetDuration('6m0s')).toBe(360_000);
  });
});
