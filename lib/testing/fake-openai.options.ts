// Public options, fault rules and recorded requests of the fake OpenAI server, with their defaults.

/**
 * The moderation categories reported by `POST /v1/moderations`, in the order OpenAI documents them for
 * `omni-moderation-latest`. Every result carries all of them in `categories`, `category_scores` and
 * `category_applied_input_types`.
 */
export const MODERATION_CATEGORIES = [
  'harassment',
  'harassment/threatening',
  'hate',
  'hate/threatening',
  'illicit',
  'illicit/violent',
  'self-harm',
  'self-harm/intent',
  'self-harm/instructions',
  'sexual',
  'sexual/minors',
  'violence',
  'violence/graphic',
] as const;

/** One of {@link MODERATION_CATEGORIES}. */
export type ModerationCategory = (typeof MODERATION_CATEGORIES)[number];

/**
 * Default moderation triggers: an input containing the key (case-insensitive substring) is flagged with the listed
 * categories (score 0.95, `true`); everything else scores 0.0001 and `false`.
 *
 * - `FLAG_ME` → `harassment`
 * - `KILL_ME_NOW` → `self-harm`, `self-harm/intent`
 */
export const DEFAULT_MODERATION_TRIGGERS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  FLAG_ME: Object.freeze(['harassment']),
  KILL_ME_NOW: Object.freeze(['self-harm', 'self-harm/intent']),
});

/** Model ids served by `GET /v1/models` and `GET /v1/models/:id` unless {@link FakeOpenAIServerOptions.models} is set. */
export const DEFAULT_FAKE_MODELS: readonly string[] = Object.freeze([
  'gpt-4o',
  'gpt-4o-2024-08-06',
  'gpt-4o-mini',
  'gpt-4o-mini-2024-07-18',
  'omni-moderation-latest',
  'text-embedding-3-small',
]);

/**
 * Dated snapshots the chat completions and responses routes report as the reply's `model` when the request names the
 * alias (as OpenAI does), unless {@link FakeOpenAIServerOptions.aliases} is set.
 */
export const DEFAULT_MODEL_ALIASES: Readonly<Record<string, string>> = Object.freeze({
  'gpt-4o': 'gpt-4o-2024-08-06',
  'gpt-4o-mini': 'gpt-4o-mini-2024-07-18',
});

/** Default {@link FakeRateLimits}: large enough that ordinary tests never run low. */
export const DEFAULT_FAKE_RATE_LIMITS: Readonly<Required<FakeRateLimits>> = Object.freeze({
  requestsPerMinute: 10_000,
  tokensPerMinute: 10_000_000,
});

/**
 * The limits reported in the `x-ratelimit-*` headers of every reply. Each request (faulted ones included) uses one
 * request and its estimated tokens (its prompt text in tokens plus its requested output cap) from a one-minute window
 * that starts with the first request after the previous window ended. The headers only report: the server never
 * answers 429 on its own (program that with a {@link FaultRule}).
 */
export interface FakeRateLimits {
  /** `x-ratelimit-limit-requests`: requests per minute. Default `10000`. */
  requestsPerMinute?: number;
  /** `x-ratelimit-limit-tokens`: tokens per minute. Default `10000000`. */
  tokensPerMinute?: number;
}

/**
 * The request as handed to {@link FakeOpenAIServerOptions.reply} and {@link FakeOpenAIServerOptions.cachedTokens}, for
 * both `POST /v1/chat/completions` and `POST /v1/responses` (whose `instructions` and `input` are given as chat-style
 * `messages`).
 */
export interface FakeChatRequest {
  /** `body.model`, as sent (before {@link FakeOpenAIServerOptions.aliases} are applied). */
  model: string;
  /**
   * Chat completions: `body.messages`, as sent (not validated beyond "is an array"). Responses: `instructions` as a
   * `{ role: 'system', content }` message, then `input` (a string becomes one `user` message; `input_text` /
   * `output_text` parts become `{ type: 'text', text }` parts).
   */
  messages: unknown[];
  /**
   * The effective output limit in tokens: `max_completion_tokens ?? max_tokens` (chat) or `max_output_tokens`
   * (responses), when sent.
   */
  max_tokens?: number;
  /** Which endpoint asked. Absent only when a caller builds the request itself. */
  endpoint?: 'chat.completions' | 'responses';
  /** The whole parsed request body, for anything else (tools, response_format, temperature, ...). */
  body: Record<string, unknown>;
}

/** {@link FakeChatRequest} plus the prompt token count the server computed, for {@link FakeOpenAIServerOptions.cachedTokens}. */
export interface FakeUsageRequest extends FakeChatRequest {
  /** `usage.prompt_tokens` that will be reported (see {@link countChatPromptTokens}). */
  promptTokens: number;
}

/** Produces the assistant's completion text for a chat request. Must be synchronous and should be deterministic. */
export type FakeReplyFn = (req: FakeChatRequest) => string;

/** Options for {@link FakeOpenAIServer.start}. All optional. */
export interface FakeOpenAIServerOptions {
  /** TCP port to listen on. Default `0` (an ephemeral free port; read it back from {@link FakeOpenAIServer.baseURL}). */
  port?: number;
  /** Interface to bind. Default `'127.0.0.1'`. */
  host?: string;
  /**
   * Accepted API keys. When set, a request whose `Authorization: Bearer <key>` is missing or not in the list gets
   * `401` with code `invalid_api_key`. Default: any key (or none) is accepted. Can be changed later with
   * {@link FakeOpenAIServer.setApiKeys}.
   */
  apiKeys?: string[];
  /**
   * Moderation triggers: trigger text (matched as a case-insensitive substring of each input) → categories flagged.
   * Replaces (does not merge with) {@link DEFAULT_MODERATION_TRIGGERS}. A flagged category scores 0.95 and is `true`;
   * all others score 0.0001 and are `false`.
   */
  moderationTriggers?: Record<string, string[]>;
  /**
   * The reply text for `POST /v1/chat/completions` and `POST /v1/responses` (tell them apart by
   * {@link FakeChatRequest.endpoint}). Default: `` `Echo: ${text of the last user message}` `` (content-part arrays
   * are joined with `\n`, non-text parts ignored), or, for a request asking for a JSON schema
   * (`response_format: { type: 'json_schema' }` / `text.format: { type: 'json_schema' }`), the minimal JSON instance of
   * the schema (required properties filled by type: `''`, `0`, `false`, `[]`, `null`, first enum value). Truncated to
   * the request's `max_completion_tokens` / `max_tokens` / `max_output_tokens` if longer. If it throws, the server
   * answers `500 server_error`. A chat request that triggers a tool call (function `tools` given and `tool_choice`
   * `'required'` or naming a function, or a last user message containing `CALL_TOOL`; see `TOOL_CALL_TRIGGER`) gets
   * the call instead.
   */
  reply?: FakeReplyFn;
  /**
   * `usage.prompt_tokens_details.cached_tokens` to report, in tokens, or a function computing it per request.
   * Clamped to `[0, prompt_tokens]`. Default `0`.
   */
  cachedTokens?: number | ((req: FakeUsageRequest) => number);
  /**
   * `usage.completion_tokens_details.reasoning_tokens` to report, in tokens. Default `0`. As on the real API,
   * reasoning tokens are part of `completion_tokens` and count against `max_completion_tokens`.
   */
  reasoningTokens?: number;
  /** Delay between consecutive SSE events of a streamed chat completion, in ms. Default `0`. */
  streamChunkDelayMs?: number;
  /** Length of each embedding vector when the request has no `dimensions`. Default `8`. */
  embeddingDimensions?: number;
  /**
   * Model ids listed by `GET /v1/models`. Default {@link DEFAULT_FAKE_MODELS}. Chat, responses and embeddings accept
   * any model unless {@link strictModels} is set.
   */
  models?: string[];
  /**
   * When `true`, chat completions, responses and embeddings for a model that is neither in {@link models} nor a key of
   * {@link aliases} get OpenAI's `404` `{ error: { type: 'invalid_request_error', code: 'model_not_found', ... } }`.
   * Default `false`.
   */
  strictModels?: boolean;
  /**
   * Alias → dated snapshot. A chat completion or response requested with an alias reports the snapshot as its
   * `model` (and `openai-model` header), as OpenAI does. Replaces (does not merge with) {@link DEFAULT_MODEL_ALIASES};
   * `{}` turns it off.
   */
  aliases?: Record<string, string>;
  /** The limits reported in `x-ratelimit-*` headers. Default {@link DEFAULT_FAKE_RATE_LIMITS}. */
  rateLimits?: FakeRateLimits;
  /**
   * Serve the HTTP control API under `/_control/` on the same port (for tests that are not written in Node): `POST
   * /_control/faults` (body: a {@link FaultRule}), `DELETE /_control/faults`, `GET /_control/requests` (the
   * {@link RecordedRequest}s as JSON), `POST /_control/reset`, `PUT /_control/api-keys` (body: `{ "keys": string[] |
   * null }`). Control requests are not recorded, not faulted and need no API key. Default `false` (the command-line
   * fake turns it on).
   */
  controlApi?: boolean;
  /**
   * Batch API: the `GET /v1/batches/:id` poll on which a batch ends (as {@link batchOutcome}); earlier polls see it
   * `in_progress`. `Infinity`: it ends only when the test says so (`server.batches.complete(id)`, `.fail(id)`,
   * `.expire(id)`). Default `1`.
   */
  batchCompletesAfterPolls?: number;
  /**
   * Batch API: how a batch ends on that poll. `completed` runs every line through the chat completions or responses
   * route (output file shuffled, failed lines in the error file); `failed` has no files and its reason in `errors`;
   * `expired` puts every line in the error file with code `batch_expired`. Default `'completed'`.
   */
  batchOutcome?: 'completed' | 'failed' | 'expired';
  /**
   * Batch API: lines (by `custom_id`, or a predicate) that fail with a `500 server_error` response in the error file
   * when their batch completes. Default: none.
   */
  batchFailedLines?: string[] | ((customId: string, body: Record<string, unknown>) => boolean);
}

/**
 * A programmed fault. Rules are checked in the order they were added; the first rule that matches the request (and
 * has uses left) is applied and its remaining use count decremented. Requests that match no rule are served normally.
 *
 * Effects are applied in this order: `delayMs` (wait), then the first of `hang`, `drop`, `status`, `malformed`, then
 * the streaming effects. `retryAfterMs` / `retryAfter` / `headers` are added to whatever response is sent.
 * Faults are applied before the API-key check and request validation (they model the transport/gateway).
 */
export interface FaultRule {
  /** Only requests to this path, e.g. `'/v1/chat/completions'` (query string ignored). Default: any path. */
  path?: string;
  /** Only requests whose `body.model` equals this. Default: any model (or none). */
  model?: string;
  /** How many matching requests this rule applies to. Default `Infinity`. */
  times?: number;
  /**
   * Respond with this HTTP status and an OpenAI-style error body `{ error: { message, type, param, code } }`, with a
   * type/code fitting the status (e.g. 429 → `rate_limit_exceeded`, 500 → `server_error`).
   */
  status?: number;
  /**
   * Override `error.code` of the `status` error body. `'insufficient_quota'` (with `status: 429`) also makes
   * `error.type` `'insufficient_quota'` and the message OpenAI's quota message, as OpenAI answers an account out of
   * credit (unless `errorType` / `errorMessage` are set). Also the `code` of the error sent by `streamFailAfterChunks`
   * and `streamErrorEventAfterChunks` (default `'server_error'` there).
   */
  errorCode?: string | null;
  /** Override `error.type` of the `status` error body. */
  errorType?: string;
  /** Override `error.message` of the `status` error body, and of the in-stream errors. */
  errorMessage?: string;
  /** Sets response header `retry-after-ms` (milliseconds). */
  retryAfterMs?: number;
  /** Sets response header `retry-after` (seconds). */
  retryAfter?: number;
  /** Extra response headers (e.g. `{ 'x-should-retry': 'false' }`). */
  headers?: Record<string, string>;
  /** Wait this long before responding, in ms. Works with or without the other effects. */
  delayMs?: number;
  /** Never respond; the request stays open until the client gives up or {@link FakeOpenAIServer.close} is called. */
  hang?: boolean;
  /** Destroy the socket without sending any response (the SDK sees a connection error). */
  drop?: boolean;
  /**
   * `200` with `content-type: application/json` and a body that is not valid JSON. For a streaming request the
   * response is instead `text/event-stream` whose first event's data is not valid JSON (the SDK's iterator throws a
   * `SyntaxError`).
   */
  malformed?: boolean;
  /**
   * Streaming only: after the initial role chunk, send this many content chunks (or all of them, if the reply has
   * fewer), then destroy the socket: no finish chunk, no usage chunk, no `data: [DONE]`. On `/v1/responses` the
   * count is of `response.output_text.delta` events (after `response.created`, `response.in_progress`,
   * `response.output_item.added`, `response.content_part.added`), and no terminal event is sent. The SDK's iterator
   * throws what fetch reports for a cut body (Node's fetch: `TypeError: terminated`).
   *
   * A rule with a streaming-only effect (this, `streamStallAfterChunks`, `streamFailAfterChunks`,
   * `streamErrorEventAfterChunks`, `omitDone`) matches streaming requests only. With `n` > 1 one "chunk" is one
   * content chunk for every choice.
   */
  streamCutAfterChunks?: number;
  /**
   * Streaming only: after the initial role chunk, send this many content chunks (or all of them, if fewer), then
   * stall forever with the socket open (until the client aborts or {@link FakeOpenAIServer.close}). On
   * `/v1/responses`, counted in `response.output_text.delta` events.
   */
  streamStallAfterChunks?: number;
  /**
   * Streaming only: after this many content chunks (or all of them, if fewer), the upstream fails mid-stream, then
   * the response ends.
   * - `/v1/chat/completions`: one `data: {"error":{"message","type":"server_error","param":null,"code"}}` event, as
   *   OpenAI sends a mid-stream failure. The SDK's iterator throws an `APIError` (status `undefined`, `.error` the
   *   object, `.code` the code) after yielding the chunks before it.
   * - `/v1/responses`: a `response.failed` event whose `response` has `status: 'failed'`, `error: { code, message }`
   *   and `usage: null`. The SDK does **not** throw: `responses.create({ stream: true })` yields the event like any
   *   other, and `responses.stream(...)` emits it and its `finalResponse()` resolves with that failed response.
   *
   * `code` is {@link errorCode} (default `'server_error'`), `message` {@link errorMessage}.
   */
  streamFailAfterChunks?: number;
  /**
   * Streaming only: after this many content chunks (or all of them, if fewer), an error event, then the response
   * ends.
   * - `/v1/responses`: `event: error` with data `{ type: 'error', code, message, param: null, sequence_number }`.
   *   The SDK's iterator (and `responses.stream(...)`) throws an `APIError` whose `.code` and `.message` are the
   *   event's.
   * - `/v1/chat/completions`: the same as {@link streamFailAfterChunks} (chat streams have no typed error event).
   */
  streamErrorEventAfterChunks?: number;
  /**
   * Streaming only: send every chunk (incl. the usage chunk if requested) but end the response without `data: [DONE]`.
   * On `/v1/responses` (which never sends `[DONE]`): no terminal `response.completed` / `response.incomplete` event.
   */
  omitDone?: boolean;
  /**
   * Serve the request normally but without `usage`: JSON replies drop the field, streams send no usage chunk (as some
   * OpenAI-compatible servers and proxies do).
   */
  omitUsage?: boolean;
  /**
   * Answer `200` with this JSON body instead of serving the request (e.g. a moderation reply of an unexpected shape).
   * Sent as is, with the usual headers.
   */
  replyBody?: unknown;
  /**
   * In-request moderation (a chat or responses request with `moderation: { model }`) fails: both `moderation.input`
   * and `moderation.output` are `{ type: 'error', code, message }` instead of results. `true` gives code
   * `'moderation_unavailable'` and a default message. The request itself is served normally.
   */
  moderationError?: boolean | { code?: string; message?: string };
}

/** A request the server received. Recorded as soon as its body has been read, before any fault is applied. */
export interface RecordedRequest {
  /** HTTP method, e.g. `'POST'`. */
  method: string;
  /** Path without query string, e.g. `'/v1/chat/completions'`. */
  path: string;
  /** Raw request target including any query string. */
  url: string;
  /** Request headers (lower-cased names). */
  headers: Record<string, string | string[] | undefined>;
  /** Parsed JSON body; the raw text if it was not valid JSON; `undefined` when empty. */
  body: any;
  /** `body.model`, when it is a string. */
  model?: string;
  /** Arrival time, `performance.now()` in ms. */
  at: number;
  /** The `x-request-id` the server answered (or, for `drop`/`hang`, would have answered) with: `req_` + 32 hex. */
  requestId: string;
  /** `body.stream === true`. */
  stream: boolean;
  /** The fault rule applied to this request, if any (the same object passed to {@link FakeOpenAIServer.fault}). */
  fault?: FaultRule;
}
