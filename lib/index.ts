// The public API: what an app imports. Internals (option resolvers, retry helpers, key builders, hook
// classes, the pipeline and its adapters) are not exported; their behaviour is reached through options.

// ---- Module, options, injection -----------------------------------------------------------------
export { OpenAIModule } from './openai.module.js';
export type {
  OpenAIModuleForRootOptions,
  OpenAIModuleAsyncOptions,
  OpenAIOptionsFactory,
} from './openai.module-definition.js';
export * from './options/openai-module-options.interface.js';
export type { RequestContextRoutes } from './request-context/request-context-routes.js';
export {
  OPENAI_CLIENT,
  OPENAI_STORE,
  OPENAI_CALL_HOOKS,
  OPENAI_RESOLVED_OPTIONS,
  OPENAI_REQUEST_ID_HEADER,
  REQUEST_ID_HEADER,
} from './openai.constants.js';
export { InjectOpenAI } from './decorators/inject-openai.decorator.js';
export { InjectOpenAIStore } from './decorators/inject-openai-store.decorator.js';

// ---- Calls ----------------------------------------------------------------------------------------
export {
  OpenAIService,
  ChatStream,
  ResponseStream,
  ModelStream,
  normalizeUsage,
  type ChatRequest,
  type ChatResult,
  type ResponseRequest,
  type ResponseResult,
  type EmbeddingResult,
  type ModerationResult,
  type StreamSummary,
} from './openai.service.js';
export type {
  CallOptions,
  CallResultMeta,
  CallReservation,
  ModerationCheckOptions,
  NormalizedUsage,
  OpenAICallHook,
  SettledCall,
  UpstreamCall,
  UpstreamEndpoint,
} from './call/upstream-call.js';
export {
  sendChatStreamAsSse,
  sendResponseStreamAsSse,
  type ChatStreamSseOptions,
} from './call/stream-sse.js';
export { responsesInputMessages } from './endpoints/responses/responses.adapter.js';

// ---- HTTP: request context, guard, pipes, filter ------------------------------------------------
export { RequestContextStore, type RequestContext } from './request-context/request-context.js';
export { RequestContextMiddleware } from './request-context/request-context.middleware.js';
export { RequestContextInterceptor } from './request-context/request-context.interceptor.js';
export {
  RequestIdentityService,
  defaultIdentityResolver,
  type IdentityResolver,
  type RequestIdentity,
} from './identity/request-identity.service.js';
export { hashUserId } from './identity/safety-identifier.js';
export { OpenAIThrottlerGuard } from './throttling/openai-throttler.guard.js';
export { OpenAIThrottlerStorage } from './throttling/openai-throttler.storage.js';
export { RateLimitService } from './throttling/rate-limit.service.js';
export { ChatRequestPipe } from './endpoints/chat-completions/chat-request.pipe.js';
export * from './endpoints/chat-completions/chat-request.schema.js';
export { ResponsesRequestPipe } from './endpoints/responses/responses-request.pipe.js';
export * from './endpoints/responses/responses-request.schema.js';
export { ModerationPipe } from './moderation/moderation.pipe.js';
export { Moderate, MODERATION_METADATA, type ModerateOptions } from './moderation/moderate.decorator.js';
export { ModerationService, type ModerationVerdict } from './moderation/moderation.service.js';
export { OpenAIExceptionFilter } from './errors/openai-exception.filter.js';
export { clientAbortSignal, rawResponse, setResponseHeader } from './utils/http.js';

// ---- Errors -------------------------------------------------------------------------------------
export * from './errors/openai-production.error.js';
export * from './errors/openai-config.error.js';
export * from './errors/openai-http.exceptions.js';
export { AttemptTimeoutError, CallAbortedException } from './errors/map-upstream-error.js';
export { InvalidBodyException } from './endpoints/parse-body.js';
export { InputTooLargeException } from './call/input-limits.js';
export {
  RateLimitExceededException,
  StorageUnavailableException,
  TokenReservationTooLargeException,
} from './throttling/rate-limit.exceptions.js';
export { BudgetExceededException, UnpricedModelException } from './budget/budget.exceptions.js';
export {
  ContentFlaggedException,
  ModerationUnavailableException,
} from './moderation/moderation.exceptions.js';

// ---- Shared state -------------------------------------------------------------------------------
export type {
  OpenAIStore,
  StorageFailurePolicy,
  ConsumeResult,
  WindowLimit,
  WindowState,
} from './storage/openai-store.interface.js';
export { MemoryStore, type MemoryStoreOptions } from './storage/memory.store.js';
export { RedisStore, type RedisStoreOptions } from './storage/redis.store.js';
export { CLUSTER_DEFAULTS, type RedisClusterConfig, type RedisClusterNode } from './storage/redis-cluster.js';

// ---- Usage, cost, budgets, metrics, health, cache, batches --------------------------------------
export * from './usage/usage.service.js';
export * from './budget/budget.service.js';
export * from './budget/budget-alert.event.js';
export * from './pricing/default-prices.js';
export { PricingService, type PriceTier } from './pricing/pricing.service.js';
export { OpenAIMetricsService } from './metrics/openai-metrics.service.js';
export * from './health/openai-health.service.js';
export { ResponseCacheService } from './cache/response-cache.service.js';
export * from './batch/batch.service.js';
export type * from './batch/batch.types.js';

// ---- Tokens and redaction -----------------------------------------------------------------------
export { countChatPromptTokens, countTextTokens, type CountableChatMessage } from './tokens/token-counter.js';
export { redactSecrets, redactText, fingerprintKey } from './logging/redact.js';
