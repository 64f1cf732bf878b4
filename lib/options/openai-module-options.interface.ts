import type { Registry } from 'prom-client';
import type { BudgetAlertEvent } from '../budget/budget-alert.event.js';
import type { ModerationCheckOptions, OpenAICallHook } from '../call/upstream-call.js';
import type { ModelPrice } from '../pricing/default-prices.js';
import type { MemoryStoreOptions } from '../storage/memory.store.js';
import type { StorageFailurePolicy } from '../storage/openai-store.interface.js';
import type { RedisStoreOptions } from '../storage/redis.store.js';
import type { IdentityResolver } from '../identity/request-identity.service.js';
import type { ExecutionContext } from '@nestjs/common';
import type { ThrottlerLimitDetail } from '@nestjs/throttler';

/**
 * Returns the API key to use for the next upstream request. Called before every request by the SDK,
 * so a secret manager can rotate the key without a restart. Cache inside the provider if the
 * secret store is slow; the SDK awaits it on the request path.
 */
export type ApiKeyProvider = () => Promise<string>;

/** How strictly model names must be dated snapshots (`gpt-4o-2024-08-06`) rather than moving aliases (`gpt-4o`). */
export type PinningMode = 'enforce' | 'warn' | 'off';

/** Model policy: which models may be called and under which names. */
export interface ModelPolicyOptions {
  /**
   * Model used when a call names none. May be an alias key.
   * @default 'gpt-4o-mini-2024-07-18'
   */
  default?: string;
  /**
   * Names the application uses, mapped to the snapshot actually sent upstream,
   * e.g. `{ chat: 'gpt-4o-2024-08-06' }`. An alias always counts as pinned when its target is.
   * @default {}
   */
  aliases?: Record<string, string>;
  /**
   * When set, only these models (after alias resolution) may be called; any other is a 400.
   * @default undefined (no allow-list)
   */
  allow?: string[];
  /**
   * `enforce`: a chat model that is not a dated snapshot is a boot error when configured and a 400 when
   * requested. `warn`: logged once per model. `off`: no check. Embedding and moderation models are not
   * checked (OpenAI publishes no dated snapshots for most of them).
   * @default 'enforce' in staging and production, 'warn' elsewhere
   */
  pinning?: PinningMode;
  /**
   * Without `allow`, which models a call may name: `configured` (the default's, the aliases' and the
   * fallbacks' targets) or `any`. With `allow`, the allow-list decides.
   * @default 'configured' in staging and production, 'any' elsewhere
   */
  requested?: 'configured' | 'any';
  /**
   * Models tried in order when the requested model keeps failing with retryable errors after its retries.
   * @default []
   */
  fallbacks?: string[];
  /**
   * Model of the moderations endpoint.
   * @default 'omni-moderation-latest'
   */
  moderation?: string;
  /**
   * Model of the embeddings endpoint when a call names none.
   * @default 'text-embedding-3-small'
   */
  embedding?: string;
}

/** Caps on output length. */
export interface MaxTokensOptions {
  /**
   * Largest `max_tokens` / `max_completion_tokens` a chat call may ask for (tokens).
   * A call that asks for less keeps its value; one that asks for none gets `default`.
   * @default 1024
   */
  cap?: number;
  /**
   * `max_tokens` applied when the call sets none (tokens); at most `cap`.
   * @default the cap
   */
  default?: number;
  /**
   * What to do with a call that asks for more than `cap`: lower it to the cap, or reject it with a 400.
   * @default 'clamp'
   */
  overCap?: 'clamp' | 'reject';
}

/** Timeouts of upstream calls. */
export interface TimeoutOptions {
  /**
   * Time one upstream attempt may take to answer (ms). For streams: time to the response headers and
   * the longest silence between two chunks.
   * @default 30000
   */
  attemptMs?: number;
  /**
   * Time one call may take overall, retries, backoff waits and fallbacks included (ms).
   * No retry starts that could not finish before it.
   * @default 90000
   */
  deadlineMs?: number;
}

/** Retries of one model, before falling back to the next. The service is the only retry owner (the SDK's own retries are off). */
export interface RetryOptions {
  /**
   * Retries of one model after its first attempt, on connection errors, timeouts, 408, 409, 429 (not
   * `insufficient_quota`) and 5xx.
   * @default 2
   */
  maxRetries?: number;
  /**
   * First backoff (ms); doubled on each retry, with full jitter.
   * @default 500
   */
  initialDelayMs?: number;
  /**
   * Largest computed backoff (ms).
   * @default 8000
   */
  maxDelayMs?: number;
  /**
   * Largest server-directed wait (`retry-after-ms`, `retry-after`) the service honours (ms). A longer
   * one is cut to this value.
   * @default 60000
   */
  maxRetryAfterMs?: number;
}

/** What the library logs. Logs go through Nest's `Logger`, so pino or winston set up on the app receive them. */
export interface LoggingOptions {
  /**
   * Log prompt and completion text with each call, redacted (API keys, Authorization values, e-mail
   * addresses, phone numbers and `redact` patterns are masked). Refused at boot in production.
   * @default false
   */
  prompts?: boolean;
  /**
   * Log the effective configuration (secrets masked) once at boot.
   * @default true
   */
  config?: boolean;
  /**
   * Log one line per upstream call.
   * @default true
   */
  calls?: boolean;
  /**
   * Extra patterns (global RegExps) masked in logged prompts and completions, besides API keys,
   * Authorization values, e-mail addresses and phone numbers.
   * @default []
   */
  redact?: RegExp[];
}

/** How the end user is identified to OpenAI (abuse monitoring). The ID is hashed before it leaves. */
export interface IdentityOptions {
  /**
   * Request field that carries the hashed user: `safety_identifier` (current), `user` (deprecated by
   * OpenAI), or `none`.
   * @default 'safety_identifier'
   */
  field?: 'safety_identifier' | 'user' | 'none';
  /**
   * Salt of the SHA-256 hash of the user ID. Keep it stable across instances and deploys so one user
   * keeps one identifier.
   * @default ''
   */
  salt?: string;
  /**
   * Also send the hashed user as `prompt_cache_key` (chat and Responses), so OpenAI keeps one prompt
   * cache per end user: better cache hits for users with long shared prefixes, and no cross-user cache
   * routing. A request that sets its own key keeps it.
   * @default false
   */
  promptCacheKey?: boolean;
  /**
   * Reads the end user's ID from the request (Express `req` / Fastify `request`, after your auth guard).
   * Every consumer uses it: request limits, token limits, budgets, usage, logs and `safety_identifier`.
   * Return `undefined` for an anonymous request (limited by client IP).
   * @default `req.user.id`, else `req.user.sub`, else `req.user.userId`
   * @example resolve: (req) => req.user?.accountId
   */
  resolve?: IdentityResolver;
}

/** One window of a per-user limit, in `@nestjs/throttler`'s terms. */
export interface ThrottleWindow {
  /** Name of the window, shown in the 429 message and usable in `@Throttle({ [name]: ... })`. */
  name: string;
  /** Requests (or tokens) admitted per window. */
  limit: number;
  /** Length of the window (ms). */
  ttl: number;
  /**
   * Request windows only: once the window refuses a request, the tracker stays refused for this long
   * (ms), as `@nestjs/throttler`'s `blockDuration`. Unset: refused until the window ends.
   * @default undefined (the rest of the window)
   */
  blockDuration?: number;
}

/** What a 429 is about, for `limits.errorMessage` (`@nestjs/throttler`'s detail plus the window's name). */
export interface RequestLimitDetail extends ThrottlerLimitDetail {
  /** The window that refused, as configured (`minute`, or `default` for `@Throttle({ default })`). */
  name: string;
}

/** Limits of one user (a tier). */
export interface TierLimits {
  /** Request windows, counted by `OpenAIThrottlerGuard`. */
  requests?: ThrottleWindow[];
  /** Token windows (prompt tokens plus `max_tokens` reserved before a call, settled to `usage.total_tokens`), enforced by `OpenAIService`. */
  tokens?: ThrottleWindow[];
}

/** Per-user limits. */
export interface LimitsOptions extends TierLimits {
  /**
   * Limits of a given user, e.g. by plan (`free` vs `paid`); `undefined` keeps the defaults above.
   * Called once per request or call; keep it O(1) (cache plans in memory).
   * @default undefined
   */
  tiers?: (user: string) => TierLimits | undefined | Promise<TierLimits | undefined>;
  /**
   * @deprecated Use `identity.resolve`, which every consumer uses (this one used to change only the
   * guard). Still honoured as `identity.resolve` when that is not set.
   * @default undefined
   */
  getTracker?: (req: any) => string | undefined | Promise<string | undefined>;
  /**
   * Whose counter a window overridden by `@Throttle()` counts in. `route`: its own counter per route
   * and user, as in `@nestjs/throttler`. `user`: the user's counter of that window, shared by every
   * route that overrides it (a different `ttl` gets its own shared counter per length), so one
   * per-user budget holds across routes.
   * @default 'route'
   */
  overrideScope?: 'route' | 'user';
  /**
   * Requests for which the guard counts and checks nothing, as `ThrottlerModule`'s `skipIf`.
   * @default undefined
   * @example skipIf: (ctx) => ctx.switchToHttp().getRequest().user?.role === 'admin'
   */
  skipIf?: (context: ExecutionContext) => boolean | Promise<boolean>;
  /**
   * `User-Agent`s the guard neither counts nor checks (e.g. health checkers), as `ThrottlerModule`'s.
   * @default []
   * @example ignoreUserAgents: [/kube-probe/i]
   */
  ignoreUserAgents?: RegExp[];
  /**
   * The `message` of the 429 body (its `error` code stays `rate_limit_exceeded`), as `ThrottlerModule`'s
   * `errorMessage`: a string, or a function of the context and the refusing window.
   * @default 'Request limit "<window>" (<limit> requests per window) exceeded; retry in <s> s'
   */
  errorMessage?:
    string | ((context: ExecutionContext, detail: RequestLimitDetail) => string | Promise<string>);
  /**
   * `false`: no `x-ratelimit-*` headers and no `retry-after` header on a 429 (the body still carries
   * `retry_after`), as `ThrottlerModule`'s `setHeaders`.
   * @default true
   */
  setHeaders?: boolean;
  /**
   * Most upstream calls in flight at once per user (or anonymous tracker), across every instance sharing
   * the store (OWASP LLM10). One more is refused with 429 `concurrency_limit_exceeded`. A slot is freed
   * when its call settles, fails or is aborted; the slot of an instance that died expires after
   * `inFlightTtlMs`. 0: no cap.
   * @default 0
   */
  maxInFlight?: number;
  /**
   * How long an in-flight slot is held at most (ms) if its call never ends (the instance died). Keep it
   * at least the longest call: a call outliving its slot no longer counts.
   * @default timeouts.deadlineMs plus 5000
   */
  inFlightTtlMs?: number;
}

/**
 * Circuit breaker per model, shared by every instance on the store: after `failures` consecutive
 * failed attempts of a model (timeouts, connection errors, 408, 409, 5xx; a 429 or another 4xx is an
 * answer and counts as success) the model is skipped for `cooldownMs` (calls go straight to its
 * fallbacks), then one probe call is let through and its outcome closes or reopens the breaker.
 */
export interface BreakerOptions {
  /**
   * Consecutive failed attempts that open a model's breaker; 0 turns the breaker off.
   * @default 5 in staging and production, 0 (off) elsewhere
   */
  failures?: number;
  /**
   * How long an open breaker skips its model before one probe is let through (ms).
   * @default 30000
   */
  cooldownMs?: number;
  /**
   * Each instance keeps its own view of the breakers, read on the call path without a store round
   * trip; transitions reach the other instances at once through the store's pub/sub (Redis). This is
   * the interval (ms) at which each instance also re-reads the breakers it knows from the store (in the
   * background), so a missed message is healed within it; with a store without pub/sub, a call re-reads
   * its model's breaker when its view is older than this.
   * @default 5000
   */
  syncIntervalMs?: number;
}

/** Where shared state (limits, budgets, usage, caches) lives. */
export interface StorageOptions {
  /**
   * `memory`: this process only (the default). `redis`: shared by every instance.
   * @default 'memory'
   */
  type?: 'memory' | 'redis';
  /** Options of the in-memory store (`maxKeys`, `sweepIntervalMs`). */
  memory?: MemoryStoreOptions;
  /** Options of the Redis store: `url` or `client`, `keyPrefix`, `commandTimeoutMs`. */
  redis?: RedisStoreOptions;
  /**
   * What the limits do while Redis fails: `fail-closed` (503), `fail-open` (admit, uncounted), or
   * `memory` (count per instance with limits divided by `instances`). Logged once per transition.
   * @default 'memory'
   */
  onFailure?: StorageFailurePolicy;
  /**
   * Number of app instances sharing the limits, to divide them by under the `memory` policy.
   * @default 1
   */
  instances?: number;
  /**
   * Longest wait for Redis at boot (ms); not reachable by then: the app fails to start.
   * @default 5000
   */
  connectTimeoutMs?: number;
}

/** The price table. */
export interface PricingOptions {
  /**
   * Prices (USD per 1M tokens) laid over the shipped `DEFAULT_PRICES` (see its date and source), by
   * model snapshot or base name, e.g. `{ 'gpt-4o-2024-08-06': { input: 2.5, cachedInput: 1.25, output: 10 } }`.
   * @default {}
   */
  models?: Record<string, ModelPrice>;
}

/** Usage ledger (per user, route and model; per day and month). */
export interface UsageOptions {
  /** Record usage and cost in the shared store. @default true */
  enabled?: boolean;
  /** Days a user's or the project's daily totals are kept. @default 35 */
  dailyRetentionDays?: number;
  /** Days monthly totals are kept. @default 400 */
  monthlyRetentionDays?: number;
  /**
   * How often the calls summed in process are written to the store (ms): one write per key per
   * interval. A crash loses at most the calls of the last interval. @default 1000
   */
  flushIntervalMs?: number;
  /**
   * Most calls kept in process unwritten while the store fails; past it the oldest batch is dropped
   * (an error log and `openai_usage_records_dropped_total`). @default 100000
   */
  maxPendingRecords?: number;
}

/** A spend limit (USD) per calendar period (UTC). */
export interface SpendLimit {
  /** Most spend per UTC day (USD). @default undefined (none) */
  dailyUsd?: number;
  /** Most spend per UTC calendar month (USD). @default undefined (none) */
  monthlyUsd?: number;
}

/** Spend budgets with alerts. */
export interface BudgetOptions {
  /** Limits of each end user. @default {} */
  user?: SpendLimit;
  /** Limits of the whole project (all users of all instances sharing the store). @default {} */
  project?: SpendLimit;
  /**
   * A user's own limits (e.g. by plan); `undefined` keeps `user`. Keep it O(1).
   * @default undefined
   */
  userLimits?: (user: string) => SpendLimit | undefined | Promise<SpendLimit | undefined>;
  /**
   * Fractions of a limit at which an alert fires, once per period and subject.
   * @default [0.5, 0.8, 1]
   */
  alertThresholds?: number[];
  /** Called for each alert (also on `BudgetService.alerts$` and logged as a warning). @default undefined */
  onAlert?: (event: BudgetAlertEvent) => void | Promise<void>;
  /**
   * The price a call without a `service_tier` (or with `auto`) is reserved at: `requested` (the
   * standard price) or `dearest` (the dearer of the standard and the Priority price). A request that
   * names no tier runs on the OpenAI project's default tier: if that is Priority, set `dearest`, or
   * concurrent calls may together spend past a budget by the Priority premium.
   * @default 'requested'
   */
  reserveTier?: 'requested' | 'dearest';
  /**
   * A call to a model without a price while a budget applies: `reject` it (400) or `allow` it uncounted.
   * @default 'reject'
   */
  unpricedModels?: 'reject' | 'allow';
  /**
   * How the project budget is served on a shared store (Redis): from leases each instance takes of it,
   * so calls do not touch the one project counter (see the README, Budgets and alerts). The memory store
   * reserves every call on the counter (one process: nothing to spread).
   * @default { enabled: true, maxUsd: 1, perCallBelowUsd: 1, ttlMs: 60000 }
   */
  projectLeases?: ProjectLeaseOptions;
}

/**
 * Leases of the project budget. An instance takes a lease (a chunk of the remaining budget, counted as
 * spent on the project counter at once) and serves calls from it in process; it returns what it did not
 * use when the lease runs out, expires, the period ends, or the app shuts down. Never overspent: the
 * counter always holds every live lease whole.
 */
export interface ProjectLeaseOptions {
  /** Serve the project budget from leases where the store supports them. @default true */
  enabled?: boolean;
  /**
   * Largest lease (USD). A lease is also at most the project's remaining budget divided by
   * `storage.instances` times 4, so the instances share what is left.
   * @default 1
   */
  maxUsd?: number;
  /**
   * While less than this (USD) remains of a project limit, every call reserves on the project counter
   * itself, so the last cents go exactly.
   * @default 1
   */
  perCallBelowUsd?: number;
  /**
   * Lifetime of a lease (ms) since it was taken or its cap last raised. An instance that dies without
   * returning its lease holds at most that long the part of it that it was not yet allowed to use.
   * @default 60000
   */
  ttlMs?: number;
}

/** Prometheus metrics (prom-client). */
export interface MetricsOptions {
  /** Collect metrics. @default true */
  enabled?: boolean;
  /** Registry to register in; default: a registry of the library's own (serve it with `OpenAIMetricsService.metrics()`). */
  registry?: Registry;
  /** Prefix of metric names. @default 'openai_' */
  prefix?: string;
  /** Buckets of the latency histograms (seconds). @default [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] */
  latencyBuckets?: number[];
  /**
   * Send `x-openai-overhead-ms` on responses of calls made while serving a request: the pipeline's own
   * time (ms, total minus upstream attempts and backoff waits), to check the overhead in production. It
   * is always observed in `openai_pipeline_overhead_seconds`.
   * @default false
   */
  overheadHeader?: boolean;
}

/** Input and output moderation (the moderations endpoint), used by `ModerationPipe` and `moderateOutput`. */
export interface ModerationOptions extends ModerationCheckOptions {
  /** Input moderation by `ModerationPipe`; `false` makes the pipe a no-op (output moderation is opt-in per call or route anyway). @default true */
  enabled?: boolean;
  /**
   * What an unavailable or timed-out moderation endpoint means: `fail-closed` refuses the request (503),
   * `fail-open` lets it through with a warning and a metric.
   * @default 'fail-closed' in staging and production, 'fail-open' elsewhere
   */
  onError?: 'fail-closed' | 'fail-open';
  /** Time one moderation check may take in all, its one retry included (ms). @default 5000 */
  timeoutMs?: number;
  /** How long a text's verdict is reused (ms) from the shared store, keyed by a SHA-256 of the text; 0: never. @default 3600000 */
  cacheTtlMs?: number;
  /** Roles of the messages whose content is moderated. @default ['user'] */
  roles?: Array<'user' | 'system' | 'developer' | 'assistant'>;
  /** Body fields (dotted paths) to moderate instead of messages, for bodies that are not chat requests. @default undefined */
  fields?: string[];
  /** Text that replaces a flagged completion. @default "Sorry, I can't help with that." */
  safeMessage?: string;
  /** Streams with output moderation are checked each time this many characters have accumulated, and at the end. @default 400 */
  streamCheckIntervalChars?: number;
  /**
   * How output is moderated: `endpoint` (the moderations endpoint, one more round trip) or `in-request`
   * (`moderation: { model }` in the chat or Responses request, the verdict comes with the reply; the
   * endpoint is the fallback when that result is missing or an error). Per call or route: `via` in
   * `moderateOutput` / `@Moderate({ output })`.
   * @default 'endpoint'
   */
  via?: 'endpoint' | 'in-request';
}

/** Caps on what a chat request may send, checked before anything reaches OpenAI (OWASP LLM10). */
export interface InputLimitsOptions {
  /** Most messages in one request. @default 50 */
  maxMessages?: number;
  /** Most characters of message content in one request, all messages together. @default 32000 */
  maxChars?: number;
  /** Most prompt tokens (as OpenAI counts them for o200k models) of one request. @default 8000 */
  maxPromptTokens?: number;
}

/** Response cache of deterministic chat requests. */
export interface CacheOptions {
  /**
   * How long an answer to a deterministic request (`temperature: 0`, one choice, no tools) is reused
   * (ms); 0 turns the cache off.
   * @default 0
   */
  ttlMs?: number;
  /** Keep one cache per user instead of one for all users. @default false */
  perUser?: boolean;
  /** Completions larger than this (bytes of JSON) are not cached. @default 262144 */
  maxEntryBytes?: number;
}

/**
 * Pacing by OpenAI's own `x-ratelimit-*` headers, read from every reply and kept per model and project
 * in the store: when the organization's remaining requests or tokens of a model are nearly spent, a call
 * to it waits for the reported reset (`queue`) or skips that model for its fallbacks and, with none left,
 * is refused at once with 429 `upstream_rate_limited` (`refuse`), instead of being sent to come back 429.
 */
export interface PacingOptions {
  /**
   * `off`: the headers only feed the metrics. `queue`: wait until the reported reset, when that fits in
   * the call's deadline and `retry.maxRetryAfterMs` (else as `refuse`). `refuse`: skip the model.
   * @default 'queue' in staging and production, 'off' elsewhere
   */
  mode?: 'off' | 'queue' | 'refuse';
  /**
   * Pace a model while its `x-ratelimit-remaining-requests` is at or below this (until
   * `x-ratelimit-reset-requests`).
   * @default 0
   */
  minRemainingRequests?: number;
  /**
   * Pace a model while its `x-ratelimit-remaining-tokens` is at or below this, or below what the call
   * reserves (prompt tokens plus its output cap), until `x-ratelimit-reset-tokens`.
   * @default 0
   */
  minRemainingTokens?: number;
  /**
   * Interval (ms) at which each instance re-reads from the store the paced state of the models it
   * knows (in the background), so a missed pub/sub message, or one sent before the instance started,
   * is healed within it.
   * @default 5000
   */
  syncIntervalMs?: number;
}

/** Options a profile may override: everything but the profiles themselves and `environment`. */
export interface OpenAIProfileOptions {
  apiKey?: string | ApiKeyProvider;
  /**
   * With an async key provider: how long a key it returned is reused (ms) before it is asked again. An
   * upstream 401 asks it again at once, once for all the calls that failed with that key (single-flight),
   * and each of those calls is sent once more with the new key. 0: ask before every request.
   * @default 300000
   */
  apiKeyCacheMs?: number;
  organization?: string;
  project?: string;
  baseURL?: string;
  defaultHeaders?: Record<string, string>;
  models?: ModelPolicyOptions;
  maxTokens?: MaxTokensOptions;
  timeouts?: TimeoutOptions;
  retry?: RetryOptions;
  logging?: LoggingOptions;
  identity?: IdentityOptions;
  limits?: LimitsOptions;
  storage?: StorageOptions;
  pricing?: PricingOptions;
  usage?: UsageOptions;
  budgets?: BudgetOptions;
  metrics?: MetricsOptions;
  moderation?: ModerationOptions;
  input?: InputLimitsOptions;
  cache?: CacheOptions;
  breaker?: BreakerOptions;
  pacing?: PacingOptions;
}

/**
 * Options of `OpenAIModule.forRoot()` / `forRootAsync()`.
 *
 * @example
 * OpenAIModule.forRoot({
 *   apiKey: process.env.OPENAI_API_KEY,
 *   models: { default: 'chat', aliases: { chat: 'gpt-4o-2024-08-06' }, fallbacks: ['gpt-4o-mini-2024-07-18'] },
 *   profiles: { development: { models: { pinning: 'warn' } } },
 * })
 */
export interface OpenAIModuleOptions extends OpenAIProfileOptions {
  /**
   * Name of the active environment: picks `profiles[environment]` and the shipped defaults of that
   * environment (`development`, `test`, `staging`, `production`; any other name you define in
   * `profiles` starts from the production defaults).
   * @default process.env.NODE_ENV, else 'development'
   */
  environment?: string;
  /** Per-environment overrides, deep-merged over the base options. @default {} */
  profiles?: Record<string, OpenAIProfileOptions>;
  /**
   * Your own call hooks (see `OpenAICallHook`), run on every metered call after the built-in ones that
   * can refuse it (token limits, budgets) and before the usage ledger: the built-in hooks stay. A hook
   * may refuse a call by throwing an `HttpException` from `reserve` (its siblings' holds are released).
   * With `forRootAsync`, build them in `useFactory` from injected services.
   * @default []
   * @example hooks: [{ reserve: (call) => ({ settle: (s) => audit.record(call.user, s.costUsd), release: () => {} }) }]
   */
  hooks?: OpenAICallHook[];
}

/** Extra options of `forRoot()` / `forRootAsync()` that shape the module, not the calls. */
export interface OpenAIModuleExtras {
  /** Register the module globally. @default false */
  isGlobal?: boolean;
}

/** Options after profile merge, defaults and validation: every field set. */
export interface ResolvedOpenAIOptions {
  environment: string;
  hooks: OpenAICallHook[];
  apiKey: string | ApiKeyProvider;
  apiKeyCacheMs: number;
  organization?: string;
  project?: string;
  baseURL?: string;
  defaultHeaders: Record<string, string>;
  models: Required<Omit<ModelPolicyOptions, 'allow'>> & { allow?: string[] };
  maxTokens: Required<MaxTokensOptions>;
  timeouts: Required<TimeoutOptions>;
  retry: Required<RetryOptions>;
  logging: Required<LoggingOptions>;
  identity: Required<Omit<IdentityOptions, 'resolve'>> & Pick<IdentityOptions, 'resolve'>;
  limits: Required<Pick<LimitsOptions, 'requests' | 'tokens'>> &
    Pick<
      LimitsOptions,
      'tiers' | 'getTracker' | 'overrideScope' | 'skipIf' | 'ignoreUserAgents' | 'errorMessage' | 'setHeaders'
    > & { maxInFlight: number; inFlightTtlMs?: number };
  storage: Required<Pick<StorageOptions, 'type' | 'onFailure' | 'instances' | 'connectTimeoutMs'>> &
    Pick<StorageOptions, 'memory' | 'redis'>;
  pricing: Required<PricingOptions>;
  usage: Required<UsageOptions>;
  budgets: Required<
    Pick<BudgetOptions, 'user' | 'project' | 'alertThresholds' | 'unpricedModels' | 'reserveTier'>
  > & { projectLeases: Required<ProjectLeaseOptions> } & Pick<BudgetOptions, 'onAlert' | 'userLimits'>;
  metrics: Required<Pick<MetricsOptions, 'enabled' | 'prefix' | 'latencyBuckets' | 'overheadHeader'>> &
    Pick<MetricsOptions, 'registry'>;
  moderation: Required<Omit<ModerationOptions, 'categories' | 'fields' | 'via'>> &
    Pick<ModerationOptions, 'categories' | 'fields'> & { via: 'endpoint' | 'in-request' };
  input: Required<InputLimitsOptions>;
  cache: Required<CacheOptions>;
  breaker: Required<BreakerOptions>;
  pacing: Required<PacingOptions>;
}
