/** Normalized usage of one upstream call, whatever the endpoint (tokens). */
export interface NormalizedUsage {
  prompt_tokens: number;
  /** Part of `prompt_tokens` served from OpenAI's prompt cache (priced at the cached-input rate). */
  cached_tokens: number;
  completion_tokens: number;
  /** Part of `completion_tokens` spent on reasoning. */
  reasoning_tokens: number;
  total_tokens: number;
  /** True when the upstream sent no usage (a stream cut short) and these figures were counted locally. */
  estimated: boolean;
}

/** Zero usage (a cache hit, a non-metered endpoint such as moderations). */
export const ZERO_USAGE: Readonly<NormalizedUsage> = Object.freeze({
  prompt_tokens: 0,
  cached_tokens: 0,
  completion_tokens: 0,
  reasoning_tokens: 0,
  total_tokens: 0,
  estimated: false,
});

/** Endpoint an upstream call goes to. */
export type UpstreamEndpoint = 'chat.completions' | 'responses' | 'embeddings' | 'moderations';

/**
 * Endpoint-agnostic view of one call, as limits, budgets, usage and logging see it. Built by the service
 * before the first attempt; `model` is the requested (resolved) model even when a fallback answers.
 */
export interface UpstreamCall {
  endpoint: UpstreamEndpoint;
  model: string;
  stream: boolean;
  /** End user the call is made for (the app's own ID, not the hash sent upstream). */
  user?: string;
  /**
   * For an anonymous call made while serving a request: the tracker its limits count against
   * (`ip:<client IP>`). Token limits apply to it; per-user budgets and the per-user ledger do not.
   */
  tracker?: string;
  /** Route label, e.g. `POST /chat`, or the `route` call option outside HTTP. */
  route?: string;
  /** Inbound request ID, when the call is made while serving a request. */
  requestId?: string;
  /** Prompt tokens counted before the call (chat only), tokens. */
  promptTokens: number;
  /** Output tokens the call may use at most (`max_tokens` after the cap), tokens. */
  maxOutputTokens: number;
  /** Every model that may answer: `model`, then its fallbacks (budgets reserve at the dearest). */
  candidates: readonly string[];
  /** The `service_tier` the request asks for, if any (budgets reserve at the Priority price when it is `priority`). */
  serviceTier?: string;
}

/** How a call ended, as hooks and the log line see it. */
export interface SettledCall {
  /** Model that answered (a fallback when `fallbackFrom` is set). */
  model: string;
  fallbackFrom?: string;
  usage: NormalizedUsage;
  openaiRequestId?: string;
  attempts: number;
  latencyMs: number;
  /** Cost of `usage` on `model` (USD); `null` when the model has no price. */
  costUsd?: number | null;
  /** The service tier that served the call, as the upstream reported it. */
  serviceTier?: string;
}

/** A hold placed before a call (tokens, budget) that must end exactly once: settled or released. */
export interface CallReservation {
  /** The call succeeded, or a stream ended with what it received: replace the hold with real usage. */
  settle(result: SettledCall): Promise<void> | void;
  /** The call failed without usage (upstream error, timeout, abort before any output): drop the hold. */
  release(): Promise<void> | void;
}

/**
 * Cross-cutting behaviour run around every upstream call of `OpenAIService` (token limits, budgets,
 * usage). `reserve` may throw an HttpException (e.g. 429) to refuse the call before it is made.
 */
export interface OpenAICallHook {
  reserve(call: UpstreamCall): Promise<CallReservation | void> | CallReservation | void;
}

/** Options of one service call. */
export interface CallOptions {
  /** End user the call is made for; defaults to the user of the current request context. */
  user?: string;
  /** Cancels the call (e.g. the client disconnected). */
  signal?: AbortSignal;
  /** Route label for usage and metrics outside HTTP. */
  route?: string;
  /** Fallback models for this call instead of the configured ones; `false`: none. */
  fallbacks?: string[] | false;
  /** Retries of one model for this call instead of `retry.maxRetries`. */
  maxRetries?: number;
  /** Attempt timeout for this call instead of `timeouts.attemptMs` (ms). */
  attemptTimeoutMs?: number;
  /** Deadline of this call instead of `timeouts.deadlineMs` (ms). */
  deadlineMs?: number;
  /**
   * Check the completion with the moderations endpoint before returning it (chat and streams).
   * `true` uses the module's `moderation` options; an object overrides some. Default: the route's
   * `@Moderate({ output: ... })`, else off.
   */
  moderateOutput?: boolean | ModerationCheckOptions;
}

/** Which moderation results count as flagged, for one check. */
export interface ModerationCheckOptions {
  /** Only these categories count (e.g. `['violence', 'self-harm']`). @default all */
  categories?: string[];
  /**
   * Score thresholds per category (0..1): a category counts as flagged when its score reaches the
   * threshold, stricter or looser than OpenAI's own `flagged`. Categories without a threshold use OpenAI's verdict.
   * @default {}
   */
  thresholds?: Record<string, number>;
  /** `fail-closed`: an unavailable moderation endpoint is a 503. `fail-open`: the text passes, logged and counted. */
  onError?: 'fail-closed' | 'fail-open';
  /**
   * Output only: how a completion or response is moderated. `endpoint`: the moderations endpoint, one
   * more round trip (streams are checked as they grow). `in-request`: the chat or Responses request asks
   * for `moderation: { model }` and the upstream returns the verdict with the reply, no extra round trip
   * (streams are judged at their end); when that result is missing or an error, the moderations endpoint
   * is used instead.
   * @default 'endpoint'
   */
  via?: 'endpoint' | 'in-request';
}

/** Result metadata common to all endpoints. */
export interface CallResultMeta {
  /** Model that answered (a fallback's name when one answered). */
  model: string;
  /** The requested model when a fallback answered. */
  fallbackFrom?: string;
  /** Upstream `x-request-id`. */
  openaiRequestId?: string;
  /** Attempts made, the successful one included. */
  attempts: number;
  latencyMs: number;
  usage: NormalizedUsage;
  /** Cost from the price table (USD), at the price of the service tier that served the call; `null` when unpriced. */
  costUsd: number | null;
  /** The service tier that served the call, as the upstream reported it (`default`, `flex`, `priority`, ...). */
  serviceTier?: string;
}
