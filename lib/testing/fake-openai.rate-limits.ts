import { countTextTokens, messageText } from '../tokens/token-counter.js';
import { isRecord } from '../utils/is-record.js';
import { DEFAULT_FAKE_RATE_LIMITS, type FakeRateLimits } from './fake-openai.options.js';

const WINDOW_MS = 60_000;

/**
 * A duration as OpenAI writes it in `x-ratelimit-reset-*` (Go's duration format): `12ms`, `1.5s`, `6m0s`, `1h2m3s`.
 */
export function formatResetDuration(ms: number): string {
  const total = Math.max(0, Math.round(ms));
  if (total < 1000) return `${total}ms`;
  const hours = Math.floor(total / 3_600_000);
  const minutes = Math.floor((total % 3_600_000) / 60_000);
  const seconds = (total % 60_000) / 1000;
  const secondsText = `${Number(seconds.toFixed(3))}s`;
  if (hours > 0) return `${hours}h${minutes}m${secondsText}`;
  if (minutes > 0) return `${minutes}m${secondsText}`;
  return secondsText;
}

/** Tokens OpenAI would reserve for a request: its prompt text in tokens plus its requested output cap. */
export function estimateRequestTokens(body: unknown): number {
  if (!isRecord(body)) return 0;
  const texts: string[] = [];
  const addContent = (content: unknown): void => {
    if (typeof content === 'string') texts.push(content);
    else if (Array.isArray(content)) {
      for (const p of content) {
        if (typeof p === 'string') texts.push(p);
        else if (isRecord(p) && typeof p.text === 'string') texts.push(p.text);
      }
    }
  };
  if (Array.isArray(body.messages)) {
    for (const m of body.messages) if (isRecord(m)) texts.push(messageText(m.content));
  }
  if (typeof body.instructions === 'string') texts.push(body.instructions);
  if (Array.isArray(body.input)) {
    for (const item of body.input) {
      if (isRecord(item)) addContent(item.content);
      else addContent([item]);
    }
  } else addContent(body.input);
  const cap = [body.max_completion_tokens, body.max_tokens, body.max_output_tokens].find(
    (v): v is number => typeof v === 'number' && v > 0,
  );
  return countTextTokens(texts.join('\n')) + (cap ?? 0);
}

/** The one-minute request and token windows reported in `x-ratelimit-*` headers. */
export class RateLimitWindow {
  private readonly limits: Required<FakeRateLimits>;
  private startedAt = 0;
  private requests = 0;
  private tokens = 0;

  constructor(limits: FakeRateLimits | undefined) {
    this.limits = { ...DEFAULT_FAKE_RATE_LIMITS, ...limits };
  }

  /** Counts one request of `tokens` estimated tokens and returns the headers to send with its reply. */
  take(tokens: number, now = Date.now()): Record<string, string> {
    if (now - this.startedAt >= WINDOW_MS) {
      this.startedAt = now;
      this.requests = 0;
      this.tokens = 0;
    }
    this.requests += 1;
    this.tokens += tokens;
    const { requestsPerMinute, tokensPerMinute } = this.limits;
    const reset = formatResetDuration(this.startedAt + WINDOW_MS - now);
    return {
      'x-ratelimit-limit-requests': String(requestsPerMinute),
      'x-ratelimit-limit-tokens': String(tokensPerMinute),
      'x-ratelimit-remaining-requests': String(Math.max(0, requestsPerMinute - this.requests)),
      'x-ratelimit-remaining-tokens': String(Math.max(0, tokensPerMinute - this.tokens)),
      'x-ratelimit-reset-requests': reset,
      'x-ratelimit-reset-tokens': reset,
    };
  }

  /** Starts a fresh window at the next request. */
  reset(): void {
    this.startedAt = 0;
  }
}
