/**
 * A duration as OpenAI writes it in `x-ratelimit-reset-*` (Go's format: `12ms`, `1s`, `1.5s`, `6m0s`,
 * `1h2m3s`), in ms; `undefined` when it is not one.
 */
export function parseResetDuration(text: string | null | undefined): number | undefined {
  if (!text) return undefined;
  const t = text.trim();
  if (t === '') return undefined;
  // A scanner (replies carry two of these; no RegExp or allocation): number, unit, repeated.
  let ms = 0;
  let i = 0;
  while (i < t.length) {
    const from = i;
    while (i < t.length && isDigit(t.charCodeAt(i))) i++;
    if (i === from) return undefined;
    if (t[i] === '.') {
      i++;
      const frac = i;
      while (i < t.length && isDigit(t.charCodeAt(i))) i++;
      if (i === frac) return undefined;
    }
    const n = Number(t.slice(from, i));
    let unit: number;
    if (t.startsWith('ms', i)) [unit, i] = [1, i + 2];
    else if (t.startsWith('us', i) || t.startsWith('µs', i)) [unit, i] = [1e-3, i + 2];
    else if (t.startsWith('ns', i)) [unit, i] = [1e-6, i + 2];
    else if (t[i] === 'h') [unit, i] = [3_600_000, i + 1];
    else if (t[i] === 'm') [unit, i] = [60_000, i + 1];
    else if (t[i] === 's') [unit, i] = [1_000, i + 1];
    else return undefined;
    ms += n * unit;
  }
  // OpenAI's windows reset within a day: a longer reset (a proxy's bug, a hostile upstream) would pin a
  // model for every instance for as long: it is no information.
  return Number.isFinite(ms) && ms <= MAX_RESET_MS ? ms : undefined;
}

const isDigit = (c: number) => c >= 48 && c <= 57;

/** Longest reset taken from `x-ratelimit-reset-*` (ms): one day, OpenAI's longest limit window. */
export const MAX_RESET_MS = 86_400_000;

/** What one reply said of the organization's limits of a model. */
export interface UpstreamRateLimits {
  remainingRequests?: number;
  remainingTokens?: number;
  /** Epoch ms when the request window resets. */
  resetRequestsAt?: number;
  /** Epoch ms when the token window resets. */
  resetTokensAt?: number;
}

const count = (v: string | null): number | undefined => {
  if (v === null || v.trim() === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
};

/** The `x-ratelimit-*` headers of a reply; `undefined` when it has none. */
export function readRateLimitHeaders(
  headers: { get(name: string): string | null } | undefined,
  now = Date.now(),
): UpstreamRateLimits | undefined {
  if (!headers) return undefined;
  const r: UpstreamRateLimits = {
    remainingRequests: count(headers.get('x-ratelimit-remaining-requests')),
    remainingTokens: count(headers.get('x-ratelimit-remaining-tokens')),
  };
  const rr = parseResetDuration(headers.get('x-ratelimit-reset-requests'));
  const rt = parseResetDuration(headers.get('x-ratelimit-reset-tokens'));
  if (rr !== undefined) r.resetRequestsAt = Math.ceil(now + rr);
  if (rt !== undefined) r.resetTokensAt = Math.ceil(now + rt);
  return r.remainingRequests === undefined && r.remainingTokens === undefined ? undefined : r;
}
