import { HttpException, Inject, Injectable, Logger, Optional } from '@nestjs/common';
import OpenAI, { APIConnectionTimeoutError, APIError, APIUserAbortError } from 'openai';
import { OpenAIMetricsService, type StatusClass } from './metrics/openai-metrics.service.js';
import { PricingService } from './pricing/pricing.service.js';
import { ResponseCacheService } from './cache/response-cache.service.js';
import { MODERATION_METADATA, type ModerateOptions } from './moderation/moderate.decorator.js';
import { ContentFlaggedException } from './moderation/moderation.exceptions.js';
import { validateModerationReply } from './moderation/moderation-reply.schema.js';
import { RequestContextStore } from './context/request-context.js';
import { RefusalRecorder } from './call/refusal.recorder.js';
import type {
  CallOptions,
  CallReservation,
  ModerationCheckOptions,
  CallResultMeta,
  NormalizedUsage,
  OpenAICallHook,
  SettledCall,
  UpstreamCall,
  UpstreamEndpoint,
} from './call/upstream-call.js';
import { InjectOpenAI } from './decorators/inject-openai.decorator.js';
import {
  AttemptTimeoutError,
  CallAbortedException,
  describeError,
  logUpstreamFailure,
  mapUpstreamError,
  upstreamRequestId,
} from './errors/map-upstream-error.js';
import {
  OpenAIBadRequestException,
  OpenAIUpstreamException,
  OpenAIUpstreamTimeoutException,
  UpstreamRetryLaterException,
} from './errors/openai-http.exceptions.js';
import { hashUserId } from './identity/safety-identifier.js';
import type { ResolvedOpenAIOptions } from './interfaces/openai-module-options.interface.js';
import { fingerprintKey, redactSecrets, redactText } from './logging/redact.js';
import { ModelPolicy } from './models/model-policy.js';
import { OPENAI_CALL_HOOKS, OPENAI_RESOLVED_OPTIONS } from './openai.constants.js';
import { isRetryable, retryDelayMs, serverRetryAfterMs } from './retry/retry-policy.js';
import { countTextTokens } from './tokens/token-counter.js';
import { enforceInputLimits } from './pipes/chat-request.pipe.js';
import type { CountableChatMessage } from './tokens/token-counter.js';
import type {
  Attempt,
  EndpointAdapter,
  SentReply,
  StreamAdapter,
  StreamProgress,
} from './call/endpoint-adapter.js';
import { UpstreamStreamError } from './call/endpoint-adapter.js';
import {
  chatCompletionsAdapter,
  chatCompletionsStreamAdapter,
  normalizeChatUsage,
} from './endpoints/chat-completions/chat-completions.adapter.js';
import {
  responsesAdapter,
  responsesInputMessages,
  responsesStreamAdapter,
} from './endpoints/responses/responses.adapter.js';
import { embeddingsAdapter } from './endpoints/embeddings/embeddings.adapter.js';
import { moderationsAdapter } from './endpoints/moderations/moderations.adapter.js';

type ChatParams = OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming;
type ChatCompletion = OpenAI.Chat.Completions.ChatCompletion;
type ChatCompletionChunk = OpenAI.Chat.Completions.ChatCompletionChunk;

/** A chat request: the SDK's parameters, with `model` optional (the configured default) and no `stream`. */
export type ChatRequest = Omit<ChatParams, 'model' | 'stream' | 'stream_options'> & { model?: string };

/** Result of `OpenAIService.chat()`. */
export interface ChatResult extends CallResultMeta {
  /** The SDK's completion object, unchanged. */
  completion: ChatCompletion;
  /** Text of the first choice (`null` when the model returned none, e.g. a refusal or a tool call). */
  content: string | null;
  /** Set when output moderation ran: whether the completion was flagged (and replaced by the safe message). */
  outputModeration?: { flagged: boolean; categories: string[] };
  /** True when served from the response cache (no upstream call: `usage` is zero and `costUsd` 0). */
  cached?: boolean;
}

/** Checks a completion's text; throws when moderation is unavailable and fails closed. */
export type OutputModerator = (
  text: string,
  options: ModerationCheckOptions,
) => Promise<{ flagged: boolean; categories: string[] }>;

/** Result of `OpenAIService.embed()`. */
export interface EmbeddingResult extends CallResultMeta {
  response: OpenAI.CreateEmbeddingResponse;
}

/** Result of `OpenAIService.moderate()`. */
export interface ModerationResult extends CallResultMeta {
  response: OpenAI.ModerationCreateResponse;
  /** True when any input was flagged. */
  flagged: boolean;
}

type ResponseParams = OpenAI.Responses.ResponseCreateParamsNonStreaming;
type OpenAIResponse = OpenAI.Responses.Response;
type ResponseStreamEvent = OpenAI.Responses.ResponseStreamEvent;

/**
 * A Responses API request: the SDK's parameters (`input`, `instructions`, `max_output_tokens`, `tools`,
 * ...), with `model` optional (the configured default) and no `stream`. `store` defaults to `false`.
 */
export type ResponseRequest = Omit<ResponseParams, 'model' | 'stream' | 'stream_options'> & {
  model?: string;
};

/** Result of `OpenAIService.createResponse()`. */
export interface ResponseResult extends CallResultMeta {
  /** The SDK's response object, unchanged. */
  response: OpenAIResponse;
  /** The text of the response (`output_text`), or the safe message when output moderation flagged it. */
  outputText: string;
  /** Set when output moderation ran: whether the text was flagged (and replaced by the safe message). */
  outputModeration?: { flagged: boolean; categories: string[] };
  /** True when served from the response cache (no upstream call: `usage` is zero and `costUsd` 0). */
  cached?: boolean;
}

/** Summary of a finished stream, resolved by `ChatStream.finished` / `ResponseStream.finished`. */
export interface StreamSummary extends CallResultMeta {
  content: string;
  finishReason: string | null;
}

interface Prepared {
  call: UpstreamCall;
  body: Record<string, unknown>;
  fallbacks: string[];
  options: CallOptions;
  /** `performance.now()` when the call started (ms). */
  started: number;
}

interface Success<T> {
  data: T;
  response: Response;
  openaiRequestId?: string;
  model: string;
  fallbackFrom?: string;
  attempts: number;
  controller: AbortController;
}

const ZERO_USAGE: NormalizedUsage = Object.freeze({
  prompt_tokens: 0,
  cached_tokens: 0,
  completion_tokens: 0,
  reasoning_tokens: 0,
  total_tokens: 0,
  estimated: false,
}) as NormalizedUsage;

/** Normalizes Chat Completions usage (and embeddings usage, which has no completion part); zero when absent. */
export function normalizeUsage(
  u: OpenAI.CompletionUsage | OpenAI.CreateEmbeddingResponse.Usage | null | undefined,
): NormalizedUsage {
  return u ? normalizeChatUsage(u) : { ...ZERO_USAGE };
}

/** Usage counted locally (the upstream sent none): `prompt` as counted before the call, the output's tokens. */
export function estimateUsage(promptTokens: number, output: string): NormalizedUsage {
  const completion = countTextTokens(output);
  return {
    prompt_tokens: promptTokens,
    cached_tokens: 0,
    completion_tokens: completion,
    reasoning_tokens: 0,
    total_tokens: promptTokens + completion,
    estimated: true,
  };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/**
 * The OpenAI calls of the app, each run through one pipeline: model policy and `max_tokens` cap, the
 * hashed end-user identifier, reservations of the registered hooks (token limits, budgets), a
 * per-attempt timeout and an overall deadline, retries with backoff that honour `retry-after-ms` /
 * `retry-after`, fallback models, error mapping to HTTP exceptions, and one log line per call.
 *
 * For anything it does not wrap, use the configured client: `@InjectOpenAI() client: OpenAI`.
 *
 * @example
 * const r = await this.openai.chat({ messages: [{ role: 'user', content: 'Hello' }] }, { user: 'u42' });
 * r.content; r.usage.prompt_tokens; r.openaiRequestId;
 */
@Injectable()
export class OpenAIService {
  private readonly logger = new Logger('OpenAI');
  private readonly policy: ModelPolicy;
  private readonly hooks: OpenAICallHook[];
  private outputModerator?: OutputModerator;
  private readonly pendingSettlements = new Set<Promise<void>>();
  /** Models whose replies came without usage, warned about once each. */
  private readonly missingUsageWarned = new Set<string>();

  constructor(
    @InjectOpenAI() readonly client: OpenAI,
    @Inject(OPENAI_RESOLVED_OPTIONS) readonly options: ResolvedOpenAIOptions,
    @Optional() @Inject(OPENAI_CALL_HOOKS) hooks?: OpenAICallHook[],
    @Optional() private readonly pricing: PricingService = new PricingService(options),
    @Optional()
    readonly metrics: OpenAIMetricsService = new OpenAIMetricsService({
      ...options,
      metrics: { ...options.metrics, enabled: false },
    }),
    @Optional() private readonly cache?: ResponseCacheService,
    @Optional() private readonly refusals?: RefusalRecorder,
  ) {
    this.policy = new ModelPolicy(options.models);
    this.hooks = hooks ?? [];
  }

  /**
   * A chat completion.
   * @throws ModelNotAllowedException (400), OpenAIBadRequestException (400), OpenAIUpstreamException (502),
   *   OpenAIUpstreamTimeoutException (504), CallAbortedException (499), or a hook's exception (e.g. 429).
   */
  async chat(request: ChatRequest, options: CallOptions = {}): Promise<ChatResult> {
    const prep = this.prepareChat(request, options, false);
    const { data, meta, cached } = await this.runCached(chatCompletionsAdapter, prep);
    const result: ChatResult = {
      completion: data,
      content: data.choices[0]?.message?.content ?? null,
      ...meta,
      ...(cached ? { cached } : {}),
    };
    // After settling: the completion was produced and billed whatever moderation says of it.
    const verdict = await this.checkOutput(result.content, options);
    if (verdict) {
      result.outputModeration = verdict;
      if (verdict.flagged) {
        result.content = this.options.moderation.safeMessage;
        const message = result.completion.choices[0]?.message;
        if (message) message.content = result.content;
      }
    }
    return result;
  }

  /**
   * A Responses API call (`POST /v1/responses`), through the same pipeline as `chat()`: model policy,
   * the `max_output_tokens` cap, input caps and the prompt-token estimate over `input` and
   * `instructions`, the hashed end user in `safety_identifier`, token limits and budgets settled to the
   * real `usage`, retries, fallbacks, usage, metrics, one log line, the response cache and output
   * moderation of `output_text`. `store` is `false` unless the request sets it (no data kept by OpenAI
   * beyond what its policy requires).
   * @throws the same as `chat()`.
   */
  async createResponse(request: ResponseRequest, options: CallOptions = {}): Promise<ResponseResult> {
    const prep = this.prepareResponses(request, options, false);
    const { data, meta, text, cached } = await this.runCached(responsesAdapter, prep);
    const result: ResponseResult = {
      response: data,
      outputText: text,
      ...meta,
      ...(cached ? { cached } : {}),
    };
    const verdict = await this.checkOutput(result.outputText, options);
    if (verdict) {
      result.outputModeration = verdict;
      if (verdict.flagged) result.outputText = this.options.moderation.safeMessage;
    }
    return result;
  }

  /**
   * The pipeline of one non-streamed call, with the response cache in front when the request is
   * deterministic: a hit costs no upstream call, no token limit or budget, and is not usage.
   */
  private async runCached<Res>(
    adapter: EndpointAdapter<Res>,
    prep: Prepared,
  ): Promise<{ data: Res; meta: CallResultMeta; text: string; cached?: boolean }> {
    const cacheKey = this.cache?.keyFor(prep.body, prep.call.user, adapter.endpoint);
    if (cacheKey) {
      const hit = await this.cache!.get<Res>(cacheKey);
      if (hit !== undefined) {
        const text = adapter.text(hit);
        const meta: CallResultMeta = {
          model: (hit as { model?: string }).model ?? prep.call.model,
          attempts: 0,
          latencyMs: performance.now() - prep.started,
          usage: { ...ZERO_USAGE },
          costUsd: 0,
        };
        this.logCall(prep, 'cache_hit', meta, prep.body, text);
        return { data: hit, meta, text, cached: true };
      }
    }
    const { ok, meta, text } = await this.run(adapter, prep);
    if (cacheKey) await this.cache!.set(cacheKey, ok.data);
    return { data: ok.data, meta, text };
  }

  /**
   * The pipeline of one non-streamed call, written once for every endpoint: reserve (the hooks, when
   * the endpoint is metered) -> execute (attempts, timeouts, backoff, fallbacks) -> `check` the reply
   * -> usage (estimated when the upstream sent none) -> price -> settle -> one log line. Any failure
   * releases the reservations and is mapped, logged and counted once.
   */
  private async run<Res>(
    adapter: EndpointAdapter<Res>,
    prep: Prepared,
    check?: (data: Res, ok: Success<Res>) => void,
  ): Promise<{ ok: Success<Res>; meta: CallResultMeta; text: string }> {
    const reservations = adapter.metered ? await this.reserve(prep.call) : [];
    try {
      const ok = await this.execute(prep, (model, a) => adapter.send(this.client, prep.body, model, a));
      check?.(ok.data, ok);
      const text = adapter.text(ok.data);
      const usage = adapter.usage(ok.data) ?? this.estimated(prep, ok, text);
      const meta = this.meta(prep, ok, usage);
      await this.settle(reservations, meta);
      this.logCall(prep, 'ok', meta, adapter.metered ? prep.body : undefined, text || null);
      return { ok, meta, text };
    } catch (err) {
      await this.release(reservations);
      throw this.fail(prep, err);
    }
  }

  /** Output moderation of `text` when the call or its route asks for it; `undefined` when it does not run. */
  private async checkOutput(
    text: string | null,
    options: CallOptions,
  ): Promise<{ flagged: boolean; categories: string[] } | undefined> {
    const check = this.outputModerationFor(options);
    if (!check || !text) return undefined;
    const verdict = await this.outputModerator!(text, check);
    return { flagged: verdict.flagged, categories: verdict.categories };
  }

  /** Registers the output moderator (done by `ModerationService`). @internal */
  useOutputModerator(moderator: OutputModerator): void {
    this.outputModerator = moderator;
  }

  /** Output moderation settings of a call: its `moderateOutput` option, else the route's `@Moderate({ output })`. @internal */
  outputModerationFor(options: CallOptions): ModerationCheckOptions | undefined {
    let setting = options.moderateOutput;
    let base: ModerationCheckOptions = {};
    if (setting === undefined) {
      const ctx = RequestContextStore.get();
      const route = ((ctx?.handler && Reflect.getMetadata(MODERATION_METADATA, ctx.handler)) ??
        (ctx?.controller && Reflect.getMetadata(MODERATION_METADATA, ctx.controller))) as
        ModerateOptions | undefined;
      setting = route?.output;
      // The route's categories, thresholds and failure policy hold for its output too, unless `output` overrides them.
      if (route)
        base = { categories: route.categories, thresholds: route.thresholds, onError: route.onError };
    }
    if (!setting) return undefined;
    if (!this.outputModerator)
      throw new Error('Output moderation needs ModerationService (provided by OpenAIModule)');
    return setting === true
      ? base
      : { ...base, ...setting, thresholds: { ...base.thresholds, ...setting.thresholds } };
  }

  /**
   * A streamed chat completion. Resolves once the upstream has answered with headers (retries and
   * fallbacks happen before that; never after the first chunk). `stream_options.include_usage` is always
   * requested, so `finished` carries real usage; a stream that ends without `data: [DONE]`, stalls past
   * the attempt timeout, or is cut throws from the iterator, and is accounted from what was received.
   * @throws the same as `chat()`, before the stream starts; iteration throws OpenAIUpstreamException (502)
   *   or OpenAIUpstreamTimeoutException (504).
   */
  async stream(request: ChatRequest, options: CallOptions = {}): Promise<ChatStream> {
    const prep = this.prepareChat(request, options, true);
    const opened = await this.openStream(chatCompletionsStreamAdapter, prep);
    return new ChatStream(
      this,
      prep,
      opened.ok,
      opened.reservations,
      chatCompletionsStreamAdapter,
      opened.moderator,
    );
  }

  /**
   * A streamed Responses API call. Resolves once the upstream has answered with headers (retries and
   * fallbacks happen before that); iterate it for the SDK's typed events. A clean end is
   * `response.completed`; `response.failed`, `response.incomplete`, an `error` event, a stall past the
   * attempt timeout or a cut connection throw from the iterator, and are accounted from what was received.
   * @throws the same as `createResponse()`, before the stream starts; iteration throws
   *   OpenAIUpstreamException (502) or OpenAIUpstreamTimeoutException (504).
   */
  async streamResponse(request: ResponseRequest, options: CallOptions = {}): Promise<ResponseStream> {
    const prep = this.prepareResponses(request, options, true);
    const opened = await this.openStream(responsesStreamAdapter, prep);
    return new ResponseStream(
      this,
      prep,
      opened.ok,
      opened.reservations,
      responsesStreamAdapter,
      opened.moderator,
    );
  }

  /** Reserves and opens a stream (retries and fallbacks until the headers arrive); releases on failure. */
  private async openStream<Event>(
    adapter: StreamAdapter<Event>,
    prep: Prepared,
  ): Promise<{
    ok: Success<AsyncIterable<Event>>;
    reservations: CallReservation[];
    moderator?: (text: string) => Promise<{ flagged: boolean; categories: string[] }>;
  }> {
    const reservations = await this.reserve(prep.call);
    let ok: Success<AsyncIterable<Event>>;
    try {
      ok = await this.execute(prep, (model, a) => adapter.open(this.client, prep.body, model, a));
    } catch (err) {
      await this.release(reservations);
      throw this.fail(prep, err);
    }
    const check = this.outputModerationFor(prep.options);
    const moderator = check ? (text: string) => this.outputModerator!(text, check) : undefined;
    return { ok, reservations, moderator };
  }

  /**
   * Moderates text with the configured moderation model (one call for an array of inputs).
   * @throws OpenAIUpstreamException (502), OpenAIUpstreamTimeoutException (504).
   */
  async moderate(
    input: string | string[],
    options: CallOptions & { model?: string } = {},
  ): Promise<ModerationResult> {
    const model = options.model ?? this.options.models.moderation;
    const prep = this.prepareOther('moderations', model, { input }, options);
    let flagged = false;
    const { ok, meta } = await this.run(moderationsAdapter, prep, (data, sent) => {
      const checked = validateModerationReply(data, Array.isArray(input) ? input.length : 1);
      if (!checked.ok) {
        throw new OpenAIUpstreamException(`The moderation reply was not usable (${prep.call.model})`, {
          cause: new Error(checked.problem),
          openaiRequestId: sent.openaiRequestId,
          error: 'upstream_invalid_reply',
        });
      }
      flagged = checked.results.some((r) => r.flagged);
    });
    return { response: ok.data, flagged, ...meta };
  }

  /**
   * Embeddings of one text or several.
   * @throws OpenAIBadRequestException (400), OpenAIUpstreamException (502), OpenAIUpstreamTimeoutException (504).
   */
  async embed(
    request: Omit<OpenAI.EmbeddingCreateParams, 'model'> & { model?: string },
    options: CallOptions = {},
  ): Promise<EmbeddingResult> {
    const model = request.model ?? this.options.models.embedding;
    // One token array (`number[]`) is one input, not a list of inputs.
    const single = !Array.isArray(request.input) || request.input.every((i) => typeof i === 'number');
    const inputs: unknown[] = single ? [request.input] : (request.input as unknown[]);
    const promptTokens = inputs.reduce<number>(
      (n, i) => n + (typeof i === 'string' ? countTextTokens(i) : Array.isArray(i) ? i.length : 0),
      0,
    );
    const prep = this.prepareOther('embeddings', model, { ...request }, options, promptTokens);
    // The embeddings endpoint has no `safety_identifier`: the hashed user goes in its `user` field.
    if (prep.call.user && this.options.identity.field !== 'none' && request.user == null) {
      prep.body.user = hashUserId(prep.call.user, this.options.identity.salt);
    }
    const { ok, meta } = await this.run(embeddingsAdapter, prep);
    return { response: ok.data, ...meta };
  }

  // ---- pipeline steps -------------------------------------------------------------------------

  private prepareChat(request: ChatRequest, options: CallOptions, stream: boolean): Prepared {
    if (!request || !Array.isArray(request.messages) || request.messages.length === 0) {
      throw new OpenAIBadRequestException('messages must be a non-empty array', { error: 'invalid_request' });
    }
    const field: 'max_tokens' | 'max_completion_tokens' =
      request.max_completion_tokens != null || request.max_tokens == null
        ? 'max_completion_tokens'
        : 'max_tokens';
    const asked = request.max_completion_tokens ?? request.max_tokens ?? undefined;
    return this.prepareGeneration(
      'chat.completions',
      request,
      options,
      stream,
      request.messages,
      field,
      asked,
    );
  }

  private prepareResponses(request: ResponseRequest, options: CallOptions, stream: boolean): Prepared {
    const input = request?.input;
    if (
      !request ||
      !((typeof input === 'string' && input !== '') || (Array.isArray(input) && input.length > 0))
    ) {
      throw new OpenAIBadRequestException('input must be a non-empty string or a non-empty array', {
        error: 'invalid_request',
      });
    }
    const messages = responsesInputMessages(request);
    const prep = this.prepareGeneration(
      'responses',
      request,
      options,
      stream,
      messages,
      'max_output_tokens',
      request.max_output_tokens ?? undefined,
    );
    // Deliberate default: OpenAI keeps stored responses (data retention); a call stores only when it asks.
    if (prep.body.store === undefined) prep.body.store = false;
    return prep;
  }

  /**
   * Prepare step of the generating endpoints: model policy, the output cap on `field`, input caps and
   * the prompt-token estimate over what is sent, fallbacks, the normalized call, the hashed end user.
   */
  private prepareGeneration(
    endpoint: UpstreamEndpoint,
    request: { model?: string },
    options: CallOptions,
    stream: boolean,
    messages: readonly CountableChatMessage[],
    field: 'max_tokens' | 'max_completion_tokens' | 'max_output_tokens',
    asked: number | undefined,
  ): Prepared {
    const started = performance.now();
    const model = this.policy.resolve(request.model);
    const { cap, default: dflt, overCap } = this.options.maxTokens;
    if (asked != null && (!Number.isInteger(asked) || asked < 1)) {
      throw new OpenAIBadRequestException(`${field} must be a positive integer`, {
        error: 'invalid_request',
      });
    }
    if (asked != null && asked > cap && overCap === 'reject') {
      throw new OpenAIBadRequestException(`${field} ${asked} is above the cap of ${cap}`, {
        error: 'max_tokens_above_cap',
      });
    }
    const maxOutputTokens = asked == null ? dflt : Math.min(asked, cap);
    const fallbacks = this.policy.fallbacksFor(model, options.fallbacks);
    let promptTokens: number;
    try {
      // Counted on what is sent now (a controller may have changed the messages after the pipe).
      promptTokens = enforceInputLimits({ messages }, this.options.input);
    } catch (err) {
      throw this.refusals ? this.refusals.record(err) : err;
    }
    const call = this.newCall(endpoint, model, stream, options, promptTokens, maxOutputTokens, fallbacks);
    const body: Record<string, unknown> = { ...request, model };
    delete body.max_tokens;
    delete body.max_completion_tokens;
    body[field] = maxOutputTokens;
    this.applyIdentity(body, call.user);
    return { call, body, fallbacks, options, started };
  }

  private prepareOther(
    endpoint: UpstreamEndpoint,
    model: string,
    body: Record<string, unknown>,
    options: CallOptions,
    promptTokens = 0,
  ): Prepared {
    return {
      call: this.newCall(endpoint, model, false, options, promptTokens, 0, []),
      body,
      fallbacks: [],
      options,
      started: performance.now(),
    };
  }

  /** The normalized view of a call; the user and route default to the current request's. */
  private newCall(
    endpoint: UpstreamEndpoint,
    model: string,
    stream: boolean,
    options: CallOptions,
    promptTokens: number,
    maxOutputTokens: number,
    fallbacks: string[],
  ): UpstreamCall {
    const ctx = RequestContextStore.get();
    const user = options.user ?? ctx?.user;
    return {
      endpoint,
      model,
      stream,
      user,
      tracker: user === undefined ? ctx?.tracker : undefined,
      route: options.route ?? ctx?.route,
      requestId: ctx?.requestId,
      promptTokens,
      maxOutputTokens,
      candidates: [model, ...fallbacks],
    };
  }

  private applyIdentity(body: Record<string, unknown>, user: string | undefined): void {
    const field = this.options.identity.field;
    if (!user || field === 'none' || body.safety_identifier != null || body.user != null) return;
    body[field] = hashUserId(user, this.options.identity.salt);
  }

  /**
   * Every hook reserves at once (on Redis: one round trip of waiting, not one per hook). If one
   * refuses, the holds of the others are released and the first refusal, in hook order, is thrown.
   */
  private async reserve(call: UpstreamCall): Promise<CallReservation[]> {
    if (this.hooks.length === 0) return [];
    const outcomes = await Promise.allSettled(this.hooks.map(async (hook) => hook.reserve(call)));
    const held = outcomes.flatMap((o) => (o.status === 'fulfilled' && o.value ? [o.value] : []));
    const refused = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (refused) {
      await this.release(held);
      throw this.refusals ? this.refusals.record(refused.reason) : refused.reason;
    }
    return held;
  }

  /**
   * Settles every reservation. The store writes are issued before this returns (so a later read on
   * the same store sees them) but not awaited on the request path; `flush()` waits for them.
   * @internal
   */
  settle(reservations: CallReservation[], result: SettledCall): Promise<void> {
    if (reservations.length === 0) return Promise.resolve();
    const done = Promise.all(
      reservations.map(async (r) => {
        try {
          await r.settle(result);
        } catch (err) {
          this.logger.error(
            `settling a reservation failed: ${redactSecrets(String((err as Error)?.message ?? err))}`,
          );
        }
      }),
    ).then(() => undefined);
    this.pendingSettlements.add(done);
    void done.finally(() => this.pendingSettlements.delete(done));
    return Promise.resolve();
  }

  /** @internal */
  async release(reservations: CallReservation[]): Promise<void> {
    await Promise.all(
      reservations.map(async (r) => {
        try {
          await r.release();
        } catch (err) {
          this.logger.error(
            `releasing a reservation failed: ${redactSecrets(String((err as Error)?.message ?? err))}`,
          );
        }
      }),
    );
  }

  /** Waits until the settlements of finished calls are written (the module calls it on shutdown). */
  async flush(): Promise<void> {
    while (this.pendingSettlements.size) await Promise.all([...this.pendingSettlements]);
  }

  /**
   * Runs attempts over the model and its fallbacks until one succeeds, an error is not retryable, or
   * the deadline leaves no room for another attempt.
   */
  private async execute<T>(
    prep: Prepared,
    attemptFn: (model: string, attempt: Attempt) => Promise<SentReply<T>>,
  ): Promise<Success<T>> {
    const { options, started } = prep;
    const maxRetries = options.maxRetries ?? this.options.retry.maxRetries;
    const attemptMs = options.attemptTimeoutMs ?? this.options.timeouts.attemptMs;
    const deadlineAt = started + (options.deadlineMs ?? this.options.timeouts.deadlineMs);
    const models = [prep.call.model, ...prep.fallbacks];
    let attempts = 0;
    let lastErr: unknown;
    let lastModel = prep.call.model;
    let longWait: { ms: number; err: unknown } | undefined;

    outer: for (const model of models) {
      for (let retry = 0; retry <= maxRetries; retry++) {
        if (retry > 0) {
          const server = lastErr instanceof APIError ? serverRetryAfterMs(lastErr.headers) : undefined;
          // A server-directed wait longer than the cap or the deadline is not slept (the client would
          // wait for a retry sent before the provider said): the next model goes at once, or the call
          // fails now and passes the wait on.
          if (
            server !== undefined &&
            (server > this.options.retry.maxRetryAfterMs || performance.now() + server >= deadlineAt)
          ) {
            longWait = { ms: server, err: lastErr };
            break;
          }
          const wait = server ?? retryDelayMs(retry, lastErr, this.options.retry);
          // No time left to wait for this model: the next one (a fallback) needs no wait, try it.
          if (performance.now() + wait >= deadlineAt) break;
          try {
            await sleep(wait, options.signal);
          } catch (e) {
            throw new CallAbortedException(e);
          }
        }
        const remaining = deadlineAt - performance.now();
        if (remaining <= 0) break outer;
        attempts++;
        lastModel = model;
        const controller = new AbortController();
        const timeoutMs = Math.min(attemptMs, remaining);
        let timedOut: AttemptTimeoutError | undefined;
        const timer = setTimeout(() => {
          timedOut = new AttemptTimeoutError(
            timeoutMs < attemptMs ? 'deadline' : 'attempt',
            Math.round(timeoutMs),
          );
          controller.abort(timedOut);
        }, timeoutMs);
        const onCallerAbort = () => controller.abort(options.signal?.reason);
        if (options.signal?.aborted) {
          clearTimeout(timer);
          throw new CallAbortedException(options.signal.reason);
        }
        options.signal?.addEventListener('abort', onCallerAbort, { once: true });
        try {
          const { data, response, request_id } = await attemptFn(model, {
            signal: controller.signal,
            controller,
            timeoutMs: Math.ceil(timeoutMs),
          });
          this.metrics.attempt(prep.call, model, '2xx', retry > 0);
          return {
            data,
            response,
            openaiRequestId: request_id ?? response.headers.get('x-request-id') ?? undefined,
            model,
            fallbackFrom: model === prep.call.model ? undefined : prep.call.model,
            attempts,
            controller,
          };
        } catch (err) {
          if (options.signal?.aborted) throw new CallAbortedException(err);
          const error = timedOut && err instanceof APIUserAbortError ? timedOut : err;
          this.metrics.attempt(prep.call, model, statusClassOf(error), retry > 0);
          if (error instanceof HttpException) throw error;
          lastErr = error;
          if (!isRetryable(error) && !(error instanceof AttemptTimeoutError)) {
            (error as { attempts?: number }).attempts = attempts;
            throw Object.assign(mapUpstreamError(error, model), { attempts });
          }
          this.logger.warn({
            msg: 'openai attempt failed',
            request_id: prep.call.requestId,
            openai_request_id: upstreamRequestId(error),
            model,
            attempt: attempts,
            error: describeError(error),
          });
        } finally {
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', onCallerAbort);
        }
      }
    }
    if (longWait && longWait.err === lastErr && lastErr instanceof APIError && lastErr.status) {
      throw Object.assign(
        new UpstreamRetryLaterException(lastErr.status, longWait.ms, lastModel, {
          cause: lastErr,
          openaiRequestId: upstreamRequestId(lastErr),
        }),
        { attempts },
      );
    }
    const mapped =
      lastErr === undefined
        ? new OpenAIUpstreamTimeoutException(
            `The model provider did not answer before the deadline (${prep.call.model})`,
          )
        : mapUpstreamError(lastErr, lastModel);
    throw Object.assign(mapped, { attempts });
  }

  private meta(prep: Prepared, ok: Success<unknown>, usage: NormalizedUsage): CallResultMeta {
    const meta: CallResultMeta = {
      model: ok.model,
      fallbackFrom: ok.fallbackFrom,
      openaiRequestId: ok.openaiRequestId,
      attempts: ok.attempts,
      latencyMs: performance.now() - prep.started,
      usage,
      costUsd: this.priceUsage(ok.model, usage),
    };
    this.metrics.succeeded(prep.call, meta.model, meta.latencyMs, usage, meta.costUsd, meta.fallbackFrom);
    return meta;
  }

  /**
   * Usage of a reply that came without any (some OpenAI-compatible servers and proxies send none): an
   * estimate marked `estimated`, from the prompt tokens counted before the call and the tokens of the
   * returned text. Without it such calls would be free for token limits and budgets.
   */
  private estimated(prep: Prepared, ok: Success<unknown>, outputText: string): NormalizedUsage {
    this.warnMissingUsage(prep.call, ok.model, ok.openaiRequestId);
    return estimateUsage(prep.call.promptTokens, outputText);
  }

  /** Warns once per model that its replies come without usage. @internal */
  warnMissingUsage(call: UpstreamCall, model: string, openaiRequestId?: string): void {
    if (this.missingUsageWarned.has(model)) return;
    this.missingUsageWarned.add(model);
    this.logger.warn({
      msg: 'the upstream sent no usage: tokens and cost of this model are estimated (usage_estimated)',
      model,
      endpoint: call.endpoint,
      openai_request_id: openaiRequestId,
    });
  }

  /** Cost of `usage` on `model` (USD), reporting an unpriced model. @internal */
  priceUsage(model: string, usage: NormalizedUsage): number | null {
    const cost = this.pricing.cost(model, usage);
    if (cost === null) this.metrics.unpricedCall(model);
    return cost;
  }

  /** Logs the failure and returns the exception to throw. @internal */
  fail(prep: Prepared, err: unknown): HttpException {
    const mapped = mapUpstreamError(err, prep.call.model);
    const status = mapped.getStatus();
    const code = (mapped.getResponse() as { error?: unknown }).error;
    this.metrics.failed(prep.call, typeof code === 'string' ? code : String(status));
    const attempts = (err as { attempts?: number }).attempts ?? (mapped as { attempts?: number }).attempts;
    // Headers the exception asks for (`retry-after`) reach the client even without the exception filter.
    const headers = (mapped as { headers?: Record<string, string> }).headers;
    if (headers) for (const [k, v] of Object.entries(headers)) RequestContextStore.setHeader(k, v);
    logUpstreamFailure(
      this.logger,
      mapped,
      {
        msg: 'openai call failed',
        ...this.baseLine(prep),
        latency_ms: Math.round(performance.now() - prep.started),
        attempts,
        retries: attempts === undefined ? undefined : attempts - 1,
      },
      fingerprintKey(this.client.apiKey),
    );
    return mapped;
  }

  private baseLine(prep: Prepared) {
    return {
      request_id: prep.call.requestId,
      user: prep.call.user,
      route: prep.call.route,
      endpoint: prep.call.endpoint,
      model: prep.call.model,
    };
  }

  /** @internal */
  logCall(
    prep: Prepared,
    status: 'ok' | 'incomplete' | 'cache_hit',
    result: CallResultMeta,
    body?: Record<string, unknown>,
    output?: string | null,
  ): void {
    if (!this.options.logging.calls) return;
    const u = result.usage;
    const line: Record<string, unknown> = {
      msg: 'openai call',
      ...this.baseLine(prep),
      model: result.model,
      openai_request_id: result.openaiRequestId,
      status,
      latency_ms: Math.round(result.latencyMs * 10) / 10,
      attempts: result.attempts,
      retries: result.attempts - 1,
      fallback_from: result.fallbackFrom,
      prompt_tokens: u.prompt_tokens,
      cached_tokens: u.cached_tokens,
      completion_tokens: u.completion_tokens,
      reasoning_tokens: u.reasoning_tokens || undefined,
      cost_usd: result.costUsd,
      usage_estimated: u.estimated || undefined,
    };
    if (this.options.logging.prompts && body) {
      const extra = this.options.logging.redact;
      const prompt = body.messages ?? (body.instructions ? [body.instructions, body.input] : body.input);
      line.prompt = redactText(JSON.stringify(prompt ?? ''), extra);
      if (output != null) line.completion = redactText(output, extra);
    }
    this.logger.log(compact(line));
  }
}

/** Drops undefined fields so log lines stay short. */
function compact<T extends Record<string, unknown>>(line: T): T {
  for (const k of Object.keys(line)) if (line[k] === undefined) delete line[k];
  return line;
}

/** Status class of a failed attempt, for metrics. */
function statusClassOf(err: unknown): StatusClass {
  if (err instanceof AttemptTimeoutError || err instanceof APIConnectionTimeoutError) return 'timeout';
  const status = (err as { status?: unknown })?.status;
  if (typeof status === 'number') return status >= 500 ? '5xx' : '4xx';
  if (err instanceof APIUserAbortError) return 'aborted';
  return 'connection';
}

/**
 * A streamed call, for any streaming endpoint (its adapter reads the events): iterate it once for the
 * SDK's events. `finished` resolves with the summary (real usage, or an estimate flagged
 * `usage.estimated` when the stream was cut) or rejects with the mapped error. `abort()` cancels it; a
 * consumer that stops iterating aborts it too. Idle and deadline timers, accumulation, and one settlement.
 */
export class ModelStream<Event> implements AsyncIterable<Event> {
  /** Model that answers (a fallback's when `fallbackFrom` is set). */
  readonly model: string;
  readonly fallbackFrom?: string;
  /** Upstream `x-request-id`. */
  readonly openaiRequestId?: string;
  readonly attempts: number;
  /** Resolves when the stream ends: with the summary when complete, rejects with the mapped error otherwise. */
  readonly finished: Promise<StreamSummary>;
  /** Categories that ended the stream, when output moderation flagged it. */
  flaggedCategories?: string[];
  private resolveFinished!: (s: StreamSummary) => void;
  private rejectFinished!: (e: unknown) => void;
  private readonly progress: StreamProgress = { text: '', finishReason: null, completed: false };
  private consumed = false;
  private ended = false;
  private readonly unconsumedTimer: NodeJS.Timeout;

  /** @internal */
  constructor(
    private readonly service: OpenAIService,
    private readonly prep: Prepared,
    private readonly ok: Success<AsyncIterable<Event>>,
    private readonly reservations: CallReservation[],
    private readonly adapter: StreamAdapter<Event>,
    private readonly moderator?: (text: string) => Promise<{ flagged: boolean; categories: string[] }>,
  ) {
    this.model = ok.model;
    this.fallbackFrom = ok.fallbackFrom;
    this.openaiRequestId = ok.openaiRequestId;
    this.attempts = ok.attempts;
    this.finished = new Promise<StreamSummary>((res, rej) => {
      this.resolveFinished = res;
      this.rejectFinished = rej;
    });
    // A consumer that only awaits the iterator must not see an unhandled rejection here.
    this.finished.catch(() => undefined);
    // A stream nobody iterates must not hold its connection and reservations forever.
    const idleMs = prep.options.attemptTimeoutMs ?? service.options.timeouts.attemptMs;
    this.unconsumedTimer = setTimeout(() => {
      if (this.consumed) return;
      const reason = new AttemptTimeoutError('idle', idleMs);
      ok.controller.abort(reason);
      void this.end(false, reason);
    }, idleMs);
    this.unconsumedTimer.unref();
  }

  /** Text received so far. */
  get content(): string {
    return this.progress.text;
  }

  /** The text an event adds to the output, if any (what an SSE relay forwards as a delta). */
  delta(event: Event): string | undefined {
    return this.adapter.delta(event);
  }

  /** Cancels the upstream request. Iteration ends; what was received is accounted. */
  abort(): void {
    this.ok.controller.abort(new CallAbortedException());
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Event> {
    if (this.consumed) throw new Error('A stream can be iterated once');
    this.consumed = true;
    clearTimeout(this.unconsumedTimer);
    if (this.ended) throw this.mapStreamError(new AttemptTimeoutError('idle', 0));
    const { controller } = this.ok;
    const options = this.service.options;
    const idleMs = this.prep.options.attemptTimeoutMs ?? options.timeouts.attemptMs;
    const deadlineAt = this.prep.started + (this.prep.options.deadlineMs ?? options.timeouts.deadlineMs);
    let timedOut: AttemptTimeoutError | undefined;
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      const ms = Math.max(1, Math.min(idleMs, deadlineAt - performance.now()));
      timer = setTimeout(() => {
        timedOut = new AttemptTimeoutError(ms < idleMs ? 'deadline' : 'idle', Math.round(ms));
        controller.abort(timedOut);
      }, ms);
    };
    const callerSignal = this.prep.options.signal;
    const onCallerAbort = () => controller.abort(new CallAbortedException(callerSignal?.reason));
    callerSignal?.addEventListener('abort', onCallerAbort, { once: true });
    const p = this.progress;
    let failure: unknown;
    let completed = false;
    arm();
    try {
      let checked = 0;
      const interval = options.moderation.streamCheckIntervalChars;
      for await (const event of this.ok.data) {
        arm();
        this.adapter.read(event, p);
        if (this.moderator && p.text.length - checked >= interval) {
          checked = p.text.length;
          await this.checkOutput();
        }
        yield event;
        // A terminal failure event (`response.failed`, an `error` event) ends the stream here.
        if (p.failure) break;
      }
      if (!p.failure && this.moderator && p.text.length > checked) await this.checkOutput();
      completed = !p.failure && this.adapter.isComplete(p, this.ok.response) && !controller.signal.aborted;
      if (!completed)
        failure =
          p.failure ?? timedOut ?? controller.signal.reason ?? new Error('stream ended before its end event');
    } catch (err) {
      failure = timedOut ?? err;
    } finally {
      clearTimeout(timer);
      callerSignal?.removeEventListener('abort', onCallerAbort);
      if (!completed && failure === undefined) {
        // The consumer stopped iterating (break/return): cancel the upstream request.
        failure = new CallAbortedException();
        controller.abort(failure);
      } else if (p.failure && !controller.signal.aborted) {
        controller.abort(p.failure);
      }
      await this.end(completed, failure);
    }
    if (failure !== undefined) throw this.mapStreamError(failure);
  }

  /** Moderates the text so far; a flagged one ends the stream with a 422 `output_flagged`. */
  private async checkOutput(): Promise<void> {
    const verdict = await this.moderator!(this.progress.text);
    if (verdict.flagged) {
      this.flaggedCategories = verdict.categories;
      throw new ContentFlaggedException(verdict.categories, 'output');
    }
  }

  private mapStreamError(failure: unknown): HttpException {
    if (failure instanceof HttpException) return failure;
    if (failure instanceof AttemptTimeoutError) {
      return new OpenAIUpstreamTimeoutException(`The model provider stream stalled (${this.model})`, {
        cause: failure,
        openaiRequestId: this.openaiRequestId,
      });
    }
    if (failure instanceof UpstreamStreamError) {
      return new OpenAIUpstreamException(`The model provider stream failed (${this.model})`, {
        cause: failure,
        openaiRequestId: this.openaiRequestId,
        error: failure.kind === 'incomplete' ? 'upstream_stream_incomplete' : 'upstream_error',
      });
    }
    return new OpenAIUpstreamException(`The model provider stream ended early (${this.model})`, {
      cause: failure,
      openaiRequestId: this.openaiRequestId,
      error: 'upstream_stream_incomplete',
    });
  }

  private async end(completed: boolean, failure: unknown): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    const p = this.progress;
    // A stream that completed without its usage: the upstream does not send one.
    if (completed && !p.usage)
      this.service.warnMissingUsage(this.prep.call, this.model, this.openaiRequestId);
    const usage = p.usage ?? estimateUsage(this.prep.call.promptTokens, p.text);
    const summary: StreamSummary = {
      model: this.model,
      fallbackFrom: this.fallbackFrom,
      openaiRequestId: this.openaiRequestId,
      attempts: this.attempts,
      latencyMs: performance.now() - this.prep.started,
      usage,
      costUsd: this.service.priceUsage(this.model, usage),
      content: p.text,
      finishReason: p.finishReason,
    };
    this.service.metrics.succeeded(
      this.prep.call,
      this.model,
      summary.latencyMs,
      usage,
      summary.costUsd,
      this.fallbackFrom,
    );
    // What was received is accounted even when the stream failed: output was produced and billed.
    await this.service.settle(this.reservations, summary);
    this.service.logCall(this.prep, completed ? 'ok' : 'incomplete', summary, this.prep.body, p.text);
    if (completed) this.resolveFinished(summary);
    else {
      const err = this.mapStreamError(failure);
      (err as { summary?: StreamSummary }).summary = summary;
      this.rejectFinished(err);
    }
  }
}

/** A streamed chat completion (`OpenAIService.stream()`): iterate it once for the SDK's chunks. */
export class ChatStream extends ModelStream<ChatCompletionChunk> {}

/** A streamed Responses API call (`OpenAIService.streamResponse()`): iterate it once for the SDK's typed events. */
export class ResponseStream extends ModelStream<ResponseStreamEvent> {}
