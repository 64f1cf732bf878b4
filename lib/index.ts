export * from './openai.module.js';
export * from './openai.service.js';
export {
  OPENAI_CLIENT,
  OPENAI_RESOLVED_OPTIONS,
  OPENAI_CALL_HOOKS,
  OPENAI_STORE,
  REQUEST_ID_HEADER,
  OPENAI_REQUEST_ID_HEADER,
} from './openai.constants.js';
export type {
  OpenAIModuleForRootOptions,
  OpenAIModuleAsyncOptions,
  OpenAIOptionsFactory,
} from './openai.module-definition.js';
export { OPENAI_MODULE_OPTIONS } from './openai.module-definition.js';
export * from './interfaces/index.js';
export * from './errors/index.js';
export { AttemptTimeoutError, CallAbortedException, mapUpstreamError } from './errors/map-upstream-error.js';
export * from './call/upstream-call.js';
export * from './context/index.js';
export { InjectOpenAI } from './decorators/inject-openai.decorator.js';
export { OpenAIExceptionFilter } from './filters/openai-exception.filter.js';
export { RequestContextInterceptor } from './interceptors/request-context.interceptor.js';
export { RequestContextMiddleware } from './middleware/request-context.middleware.js';
export { resolveOpenAIOptions } from './config/resolve-options.js';
export { describeOptions } from './config/describe-options.js';
export { ENVIRONMENT_DEFAULTS, BASE_DEFAULTS } from './config/environment-defaults.js';
export { isPinnedModel } from './models/model-names.js';
export { ModelPolicy } from './models/model-policy.js';
export { isRetryable, retryDelayMs, serverRetryAfterMs } from './retry/retry-policy.js';
export { hashUserId } from './identity/safety-identifier.js';
export {
  RequestIdentityService,
  defaultIdentityResolver,
  type IdentityResolver,
  type RequestIdentity,
} from './identity/request-identity.service.js';
export { RefusalRecorder, REFUSAL_CODES } from './call/refusal.recorder.js';
export {
  redactSecrets,
  redactText,
  fingerprintKey,
  SECRET_PATTERNS,
  PERSONAL_DATA_PATTERNS,
} from './logging/redact.js';
export * from './tokens/index.js';
export * from './dto/chat-request.schema.js';
export {
  ChatRequestPipe,
  InvalidBodyException,
  InputTooLargeException,
  enforceInputLimits,
  parseBody,
} from './pipes/chat-request.pipe.js';
export {
  sendChatStreamAsSse,
  sendResponseStreamAsSse,
  type ChatStreamSseOptions,
} from './sse/chat-stream-sse.js';
export { responsesInputMessages } from './endpoints/responses/responses.adapter.js';
export * from './endpoints/responses/responses-request.schema.js';
export { ResponsesRequestPipe } from './endpoints/responses/responses-request.pipe.js';
export { clientAbortSignal, rawResponse, setResponseHeader } from './utils/http.js';
export * from './storage/index.js';
export * from './throttling/index.js';
export * from './health/openai-health.service.js';
export { InjectOpenAIStore } from './decorators/inject-openai-store.decorator.js';
export * from './pricing/index.js';
export * from './usage/index.js';
export * from './budget/index.js';
export * from './metrics/index.js';
export * from './moderation/index.js';
export * from './cache/index.js';
export * from './batch/index.js';
