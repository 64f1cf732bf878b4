/**
 * A duration as OpenAI writes it in `x-ratelimit-reset-*` (Go's format: `12ms`, `1s`, `1.5s`, `6m0s`,
 * `1h2m3s`), in ms; `undefined` when it is not one.
 */
export function parseResetDuration(text: string | null | undefined): number | undefined {
  if (!text) return undefined;
  const t = text.trim();
  if (!/^(?:\d+(?:\.\d+)?(?:h|ms|m|s|us|µs|ns))+$/.test(t)) return undefined;
  const unit: Record<string, number> = {
    h: 3_600_000,
    m: 60_000,
    s: 1_000,
    ms: 1,
    us: 1e-3,
    µs: 1e-3,
    ns: 1e-6,
  };
  let ms = 0;
  for (const [, n, u] of t.matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)/g)) ms += Number(n) * unit[u];
  // OpenAI's windows reset within a day: a longer reset (a proxy's bug, a hostile upstream) would pin a
  // model for every instance for as long: it is no information.
  return Number.isFinite(ms) && ms <= MAX_RESET_MS ? ms : undefined;
}

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
