import { Injectable, Optional } from '@nestjs/common';
import OpenAI from 'openai';
import { CallPipeline, estimateUsage } from './call/call-pipeline.js';
import {
  ChatStream,
  ModelStream,
  ResponseStream,
  type StreamOutputCheck,
  type StreamSummary,
} from './call/model-stream.js';
import type { PreparedCall } from './call/prepared-call.js';
import {
  ZERO_USAGE,
  type CallOptions,
  type CallResultMeta,
  type ModerationCheckOptions,
  type NormalizedUsage,
} from './call/upstream-call.js';
import { RequestContextStore } from './request-context/request-context.js';
import { InjectOpenAI } from './decorators/inject-openai.decorator.js';
import {
  chatCompletionsAdapter,
  chatCompletionsStreamAdapter,
  normalizeChatUsage,
} from './endpoints/chat-completions/chat-completions.adapter.js';
import { embeddingsAdapter } from './endpoints/embeddings/embeddings.adapter.js';
import { responsesAdapter, responsesStreamAdapter } from './endpoints/responses/responses.adapter.js';
import { hashUserId } from './identity/safety-identifier.js';
import type { ResolvedOpenAIOptions } from './options/openai-module-options.interface.js';
import type { OpenAIMetricsService } from './metrics/openai-metrics.service.js';
import { MODERATION_METADATA, type ModerateOptions } from './moderation/moderate.decorator.js';
import { ModerationService } from './moderation/moderation.service.js';
import { countTextTokens } from './tokens/token-counter.js';

export { ChatStream, ModelStream, ResponseStream, estimateUsage, type StreamSummary };

type ChatParams = OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming;
type ChatCompletion = OpenAI.Chat.Completions.ChatCompletion;

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

/** Normalizes Chat Completions usage (and embeddings usage, which has no completion part); zero when absent. */
export function normalizeUsage(
  u: OpenAI.CompletionUsage | OpenAI.CreateEmbeddingResponse.Usage | null | undefined,
): NormalizedUsage {
  return u ? normalizeChatUsage(u) : { ...ZERO_USAGE };
}

type Verdict = { flagged: boolean; categories: string[] };

/**
 * The OpenAI calls of the app: a thin facade over the one call pipeline (`CallPipeline`) with an
 * adapter per endpoint. Every call gets the model policy and output cap, input caps, the hashed
 * end-user identifier, the registered hooks (token limits, budgets, usage), a per-attempt timeout and a
 * deadline, retries that honour `retry-after-ms` / `retry-after`, fallback models, error mapping to HTTP
 * exceptions, metrics and one log line; generating calls also the response cache and output moderation.
 *
 * For anything it does not wrap, use the configured client: `@InjectOpenAI() client: OpenAI`.
 *
 * @example
 * const r = await this.openai.createResponse({ input: 'Hello' }, { user: 'u42' });
 * r.outputText; r.usage.prompt_tokens; r.openaiRequestId;
 */
@Injectable()
export class OpenAIService {
  /** Route settings of `@Moderate`, read once per handler. */
  private readonly routeModeration = new WeakMap<Function, ModerateOptions | null>();

  constructor(
    @InjectOpenAI() readonly client: OpenAI,
    private readonly pipeline: CallPipeline,
    @Optional() private readonly moderation?: ModerationService,
  ) {}

  /** The module's resolved options. */
  get options(): ResolvedOpenAIOptions {
    return this.pipeline.options;
  }

  /** The module's metrics. */
  get metrics(): OpenAIMetricsService {
    return this.pipeline.metrics;
  }

  /**
   * A chat completion.
   * @throws ModelNotAllowedException (400), OpenAIBadRequestException (400), InputTooLargeException (413),
   *   OpenAIUpstreamException (502), OpenAIUpstreamTimeoutException (504), UpstreamRetryLaterException
   *   (429/502), CallAbortedException (499), or a hook's exception (e.g. 429).
   */
  async chat(request: ChatRequest, options: CallOptions = {}): Promise<ChatResult> {
    const prep = this.pipeline.prepareChat(request, options, false);
    const check = this.outputModerationFor(options);
    this.askInRequest(prep, check);
    const { data, meta, cached } = await this.pipeline.runCached(chatCompletionsAdapter, prep);
    const result: ChatResult = {
      completion: data,
      content: data.choices[0]?.message?.content ?? null,
      ...meta,
      ...(cached ? { cached } : {}),
    };
    // After settling: the completion was produced and billed whatever moderation says of it.
    const verdict = await this.checkOutput(result.content, check, data.moderation?.output);
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
   * A Responses API call (`POST /v1/responses`), through the same pipeline as `chat()`: the output cap
   * on `max_output_tokens`, input caps and the prompt-token estimate over `input` and `instructions`,
   * output moderation of `output_text`. `store` is `false` unless the request sets it.
   * @throws the same as `chat()`.
   */
  async createResponse(request: ResponseRequest, options: CallOptions = {}): Promise<ResponseResult> {
    const prep = this.pipeline.prepareResponses(request, options, false);
    const check = this.outputModerationFor(options);
    this.askInRequest(prep, check);
    const { data, meta, text, cached } = await this.pipeline.runCached(responsesAdapter, prep);
    const result: ResponseResult = {
      response: data,
      outputText: text,
      ...meta,
      ...(cached ? { cached } : {}),
    };
    const verdict = await this.checkOutput(result.outputText, check, data.moderation?.output);
    if (verdict) {
      result.outputModeration = verdict;
      if (verdict.flagged) result.outputText = this.options.moderation.safeMessage;
    }
    return result;
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
    const prep = this.pipeline.prepareChat(request, options, true);
    const check = this.outputModerationFor(options);
    this.askInRequest(prep, check);
    const { ok, reservations, span } = await this.pipeline.openStream(chatCompletionsStreamAdapter, prep);
    return new ChatStream(
      this.pipeline,
      prep,
      ok,
      reservations,
      chatCompletionsStreamAdapter,
      this.streamCheck(check),
      span,
    );
  }

  /**
   * A streamed Responses API call: iterate it for the SDK's typed events. A clean end is
   * `response.completed`; `response.failed`, `response.incomplete`, an `error` event, a stall past the
   * attempt timeout or a cut connection throw from the iterator, and are accounted from what was received.
   * @throws the same as `createResponse()`, before the stream starts; iteration throws
   *   OpenAIUpstreamException (502) or OpenAIUpstreamTimeoutException (504).
   */
  async streamResponse(request: ResponseRequest, options: CallOptions = {}): Promise<ResponseStream> {
    const prep = this.pipeline.prepareResponses(request, options, true);
    const check = this.outputModerationFor(options);
    this.askInRequest(prep, check);
    const { ok, reservations, span } = await this.pipeline.openStream(responsesStreamAdapter, prep);
    return new ResponseStream(
      this.pipeline,
      prep,
      ok,
      reservations,
      responsesStreamAdapter,
      this.streamCheck(check),
      span,
    );
  }

  /**
   * Moderates text with the configured moderation model (one call for an array of inputs).
   * @throws OpenAIUpstreamException (502, also for a reply that is not one result per input),
   *   OpenAIUpstreamTimeoutException (504).
   */
  moderate(
    input: string | string[],
    options: CallOptions & { model?: string } = {},
  ): Promise<ModerationResult> {
    return this.pipeline.moderate(input, options);
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
    const prep: PreparedCall = this.pipeline.prepareOther(
      'embeddings',
      model,
      { ...request },
      options,
      promptTokens,
    );
    // The embeddings endpoint has no `safety_identifier`: the hashed user goes in its `user` field.
    if (prep.call.user && this.options.identity.field !== 'none' && request.user == null) {
      prep.body.user = hashUserId(prep.call.user, this.options.identity.salt);
    }
    const { ok, meta } = await this.pipeline.run(embeddingsAdapter, prep);
    return { response: ok.data, ...meta };
  }

  /** Waits until the settlements of finished calls are written (the module calls it on shutdown). */
  flush(): Promise<void> {
    return this.pipeline.flush();
  }

  /**
   * Output moderation settings of a call: its `moderateOutput` option, else the route's
   * `@Moderate({ output })` (with the route's categories, thresholds and failure policy).
   */
  private outputModerationFor(options: CallOptions): ModerationCheckOptions | undefined {
    let setting = options.moderateOutput;
    let base: ModerationCheckOptions = {};
    if (setting === undefined) {
      const ctx = RequestContextStore.get();
      const route = this.routeSettings(ctx?.handler) ?? this.routeSettings(ctx?.controller);
      setting = route?.output;
      // The route's categories, thresholds and failure policy hold for its output too, unless `output` overrides them.
      if (route)
        base = {
          categories: route.categories,
          thresholds: route.thresholds,
          onError: route.onError,
          via: route.via,
        };
    }
    if (!setting) return undefined;
    if (!this.moderation)
      throw new Error('Output moderation needs ModerationService (provided by OpenAIModule)');
    return setting === true
      ? base
      : { ...base, ...setting, thresholds: { ...base.thresholds, ...setting.thresholds } };
  }

  private routeSettings(target: Function | undefined): ModerateOptions | undefined {
    if (!target) return undefined;
    let found = this.routeModeration.get(target);
    if (found === undefined) {
      found = (Reflect.getMetadata(MODERATION_METADATA, target) as ModerateOptions | undefined) ?? null;
      this.routeModeration.set(target, found);
    }
    return found ?? undefined;
  }

  /** With in-request output moderation, the request asks the upstream to moderate its own output. */
  private askInRequest(prep: PreparedCall, check: ModerationCheckOptions | undefined): void {
    if (this.viaOf(check) === 'in-request' && prep.body.moderation == null)
      prep.body.moderation = { model: this.options.models.moderation };
  }

  private viaOf(check: ModerationCheckOptions | undefined): 'endpoint' | 'in-request' | undefined {
    return check ? (check.via ?? this.options.moderation.via) : undefined;
  }

  /**
   * Output moderation of a whole text when the call or its route asks for it (`undefined` when it does
   * not run): the upstream's in-request verdict when asked for and usable, else the moderations endpoint.
   */
  private async checkOutput(
    text: string | null,
    check: ModerationCheckOptions | undefined,
    inRequest: unknown,
  ): Promise<Verdict | undefined> {
    if (!check || !text) return undefined;
    const verdict =
      (this.viaOf(check) === 'in-request'
        ? this.moderation!.verdictOf(inRequest, 'output', check)
        : undefined) ?? (await this.moderation!.check([text], 'output', check));
    return { flagged: verdict.flagged, categories: verdict.categories };
  }

  /** How a stream's output is moderated, when output moderation applies. */
  private streamCheck(check: ModerationCheckOptions | undefined): StreamOutputCheck | undefined {
    if (!check) return undefined;
    return {
      endpoint: (text) => this.moderation!.check([text], 'output', check),
      inRequest:
        this.viaOf(check) === 'in-request'
          ? (result) => this.moderation!.verdictOf(result, 'output', check)
          : undefined,
    };
  }
}
