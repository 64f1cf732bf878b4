/** Injection token of the configured raw `OpenAI` client. Use `@InjectOpenAI()` rather than this token. */
export const OPENAI_CLIENT = Symbol.for('OPENAI:CLIENT');
/** Injection token of the resolved (profile-merged, validated) module options. */
export const OPENAI_RESOLVED_OPTIONS = Symbol.for('OPENAI:RESOLVED_OPTIONS');
/** Injection token of the call hooks (limits, budgets, usage) that the service runs around each upstream call. */
export const OPENAI_CALL_HOOKS = Symbol.for('OPENAI:CALL_HOOKS');
/** Injection token of the shared store (`OpenAIStore`). Use `@InjectOpenAIStore()` rather than this token. */
export const OPENAI_STORE = Symbol.for('OPENAI:STORE');
/** Name of the header that carries a request ID, inbound and outbound (OpenAI uses the same name). */
export const REQUEST_ID_HEADER = 'x-request-id';
/** Name of the response header that carries the upstream (OpenAI) request ID. */
export const OPENAI_REQUEST_ID_HEADER = 'x-openai-request-id';
