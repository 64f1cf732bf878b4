import { HttpException, Inject, Injectable, Logger, Optional } from '@nestjs/common';
import OpenAI from 'openai';
import { ResponseCacheService } from '../cache/response-cache.service.js';
import { RequestContextStore } from '../request-context/request-context.js';
import { InjectOpenAI } from '../decorators/inject-openai.decorator.js';
import { responsesInputMessages } from '../endpoints/responses/responses.adapter.js';
import { moderationsAdapter } from '../endpoints/moderations/moderations.adapter.js';
import { logUpstreamFailure, mapUpstreamError } from '../errors/map-upstream-error.js';
import { OpenAIBadRequestException, OpenAIUpstreamException } from '../errors/openai-http.exceptions.js';
import { hashUserId } from '../identity/safety-identifier.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { fingerprintKey, redactSecrets, redactText } from '../logging/redact.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { ModelPolicy } from '../models/model-policy.js';
import { validateModerationReply } from '../moderation/moderation-reply.schema.js';
import { OPENAI_CALL_HOOKS, OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import { holdAll, isPlannedHook, type HoldPlan, type PlannedHook } from './reservation-plan.js';
import { enforceInputLimits } from './input-limits.js';
import { PricingService, priceTierOf } from '../pricing/pricing.service.js';
import type { CountableChatMessage } from '../tokens/token-counter.js';
import { countTextTokens } from '../tokens/token-counter.js';
import type { Span } from '@opentelemetry/api';
import { endCallSpan, failCallSpan, startCallSpan } from '../telemetry/call-span.js';
import { CallExecutor } from './call-executor.js';
import type { EndpointAdapter, StreamAdapter, UpstreamEventStream } from './endpoint-adapter.js';
import type { ExecutedCall, PreparedCall } from './prepared-call.js';
import { RefusalRecorder } from './refusal.recorder.js';
import { CircuitBreakerService } from '../breaker/circuit-breaker.service.js';
import { PacingService } from '../pacing/pacing.service.js';
import type {
  CallOptions,
  CallReservation,
  CallResultMeta,
  NormalizedUsage,
  OpenAICallHook,
  SettledCall,
  UpstreamCall,
  UpstreamEndpoint,
} from './upstream-call.js';
import { ZERO_USAGE } from './upstream-call.js';

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

/**
 * The reservation steps of `hooks`, in order: the planned hooks (token limits, budgets) joined into one
 * step at the first one's place, whose holds are one store operation; every other hook its own step.
 * Without a store, each hook reserves alone.
 */
function joinPlannedHooks(hooks: readonly OpenAICallHook[], store: OpenAIStore | undefined): Reserver[] {
  const planned: PlannedHook[] = store
    ? hooks.filter((h): h is OpenAICallHook & PlannedHook => isPlannedHook(h))
    : [];
  const steps: Reserver[] = [];
  for (const hook of hooks) {
    if (planned.length && isPlannedHook(hook)) {
      if (hook === planned[0]) steps.push((call) => holdPlanned(planned, store!, call));
      continue;
    }
    steps.push((call) => hook.reserve(call));
  }
  return steps;
}

/** One reservation step: a hold (or nothing) now, or a promise of it. */
type Reserver = (call: UpstreamCall) => Promise<CallReservation | void> | CallReservation | void;

/** A hold a step answered (not nothing, not a promise still pending). */
const isHeld = (v: ReturnType<Reserver>): v is CallReservation => v !== undefined && !(v instanceof Promise);

/** Runs the plans of `hooks` (a failing plan aborts the others) and takes their holds as one operation. */
async function holdPlanned(
  hooks: readonly PlannedHook[],
  store: OpenAIStore,
  call: UpstreamCall,
): Promise<CallReservation | void> {
  // Plans answer without a promise when they need no lookup (no tiers, no per-user limit function).
  const plans: Array<HoldPlan | undefined | Promise<HoldPlan | undefined>> = [];
  let failure: { reason: unknown } | undefined;
  for (const h of hooks) {
    try {
      plans.push(h.plan(call));
    } catch (reason) {
      failure ??= { reason };
      plans.push(undefined);
    }
  }
  if (!failure && !plans.some((p) => p instanceof Promise))
    return holdAll(store, plans as Array<HoldPlan | undefined>);
  const outcomes = await Promise.allSettled(plans.map(async (p) => p));
  const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected') ?? failure;
  if (failed) {
    for (const o of outcomes) if (o.status === 'fulfilled') o.value?.abort?.();
    throw failed.reason;
  }
  return holdAll(
    store,
    outcomes.map((o) => (o as PromiseFulfilledResult<HoldPlan | undefined>).value),
  );
}

/** Drops undefined fields so log lines stay short. */
function compact<T extends Record<string, unknown>>(line: T): T {
  for (const k of Object.keys(line)) if (line[k] === undefined) delete line[k];
  return line;
}

/** A chat body as the prepare step reads it. */
interface ChatLike {
  model?: string;
  messages: readonly CountableChatMessage[];
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
}

/** A Responses body as the prepare step reads it. */
interface ResponsesLike {
  model?: string;
  input?: unknown;
  instructions?: unknown;
  max_output_tokens?: number | null;
}

/**
 * The call pipeline, written once for every endpoint (`OpenAIService` is a facade over it):
 * prepare (model policy, output cap, input caps and the prompt-token measure, hashed identity) ->
 * cache -> reserve (the registered hooks) -> execute (`CallExecutor`: attempts, timeouts, deadline,
 * backoff, `Retry-After`, fallbacks, abort) -> price -> settle -> telemetry (one log line, metrics).
 * Endpoints differ only by their adapter. @internal
 */
@Injectable()
export class CallPipeline {
  private readonly logger = new Logger('OpenAI');
  private readonly policy: ModelPolicy;
  private readonly hooks: OpenAICallHook[];
  /** The hooks' reservations, those that hold on the store (token limits, budgets) joined into one. */
  private readonly reservers: Reserver[];
  private readonly executor: CallExecutor;
  private readonly pendingSettlements = new Set<Promise<void>>();
  /** Models whose replies came without usage, warned about once each. */
  private readonly missingUsageWarned = new Set<string>();

  constructor(
    @InjectOpenAI() readonly client: OpenAI,
    @Inject(OPENAI_RESOLVED_OPTIONS) readonly options: ResolvedOpenAIOptions,
    @Optional() @Inject(OPENAI_CALL_HOOKS) hooks: OpenAICallHook[] | undefined,
    @Optional() private readonly pricing: PricingService = new PricingService(options),
    @Optional()
    readonly metrics: OpenAIMetricsService = new OpenAIMetricsService({
      ...options,
      metrics: { ...options.metrics, enabled: false },
    }),
    @Optional() private readonly cache?: ResponseCacheService,
    @Optional() private readonly refusals?: RefusalRecorder,
    @Optional() breaker?: CircuitBreakerService,
    @Optional() pacing?: PacingService,
    @Optional() @Inject(OPENAI_STORE) store?: OpenAIStore,
  ) {
    this.policy = new ModelPolicy(options.models);
    this.hooks = hooks ?? [];
    this.reservers = joinPlannedHooks(this.hooks, store);
    this.executor = new CallExecutor(options, this.metrics, { breaker, pacing });
  }

  /**
   * A moderations call (not metered), its reply validated: anything but one well-formed result per
   * input is a 502 `upstream_invalid_reply`, never read as clean.
   * @throws OpenAIUpstreamException (502), OpenAIUpstreamTimeoutException (504).
   */
  async moderate(
    input: string | string[],
    options: CallOptions & { model?: string } = {},
  ): Promise<{ response: OpenAI.ModerationCreateResponse; flagged: boolean } & CallResultMeta> {
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
   * The pipeline of one non-streamed call, with the response cache in front when the request is
   * deterministic: a hit costs no upstream call, no token limit or budget, and is not usage.
   */
  async runCached<Res>(
    adapter: EndpointAdapter<Res>,
    prep: PreparedCall,
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
  async run<Res>(
    adapter: EndpointAdapter<Res>,
    prep: PreparedCall,
    check?: (data: Res, ok: ExecutedCall<Res>) => void,
  ): Promise<{ ok: ExecutedCall<Res>; meta: CallResultMeta; text: string }> {
    const reservations = adapter.metered ? await this.reserve(prep.call) : [];
    const span = startCallSpan(prep.call);
    try {
      const ok = await this.executor.execute(prep, (model, a) =>
        adapter.send(this.client, prep.body, model, a),
      );
      check?.(ok.data, ok);
      const text = adapter.text(ok.data);
      const usage = adapter.usage(ok.data) ?? this.estimated(prep, ok, text);
      const meta = this.meta(prep, ok, usage, adapter.tier?.(ok.data));
      this.settle(reservations, meta);
      this.logCall(prep, 'ok', meta, adapter.metered ? prep.body : undefined, text || null);
      endCallSpan(span, meta);
      this.overhead(prep, ok);
      return { ok, meta, text };
    } catch (err) {
      await this.release(reservations);
      throw this.fail(prep, err, span);
    }
  }

  /**
   * The pipeline's own time of a call (total minus upstream attempts and backoff waits): observed in
   * `openai_pipeline_overhead_seconds`, and sent as `x-openai-overhead-ms` when `metrics.overheadHeader`.
   * For a stream, up to its opening. @internal
   */
  overhead(prep: PreparedCall, ok: ExecutedCall<unknown>): void {
    const ms = Math.max(0, performance.now() - prep.started - ok.upstreamMs);
    this.metrics.overhead(prep.call, ms);
    if (this.options.metrics.overheadHeader)
      RequestContextStore.setHeader('x-openai-overhead-ms', (Math.round(ms * 100) / 100).toFixed(2));
  }

  /** Reserves and opens a stream (retries and fallbacks until the headers arrive); releases on failure. */
  async openStream<Event>(
    adapter: StreamAdapter<Event>,
    prep: PreparedCall,
  ): Promise<{ ok: ExecutedCall<UpstreamEventStream<Event>>; reservations: CallReservation[]; span: Span }> {
    const reservations = await this.reserve(prep.call);
    const span = startCallSpan(prep.call);
    try {
      const ok = await this.executor.execute(prep, (model, a) =>
        adapter.open(this.client, prep.body, model, a),
      );
      this.overhead(prep, ok);
      return { ok, reservations, span };
    } catch (err) {
      await this.release(reservations);
      throw this.fail(prep, err, span);
    }
  }

  prepareChat(request: ChatLike, options: CallOptions, stream: boolean): PreparedCall {
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

  prepareResponses(request: ResponsesLike, options: CallOptions, stream: boolean): PreparedCall {
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
  ): PreparedCall {
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
    const tier = (request as { service_tier?: unknown }).service_tier;
    if (typeof tier === 'string') call.serviceTier = tier;
    const body: Record<string, unknown> = { ...request, model };
    delete body.max_tokens;
    delete body.max_completion_tokens;
    body[field] = maxOutputTokens;
    this.applyIdentity(body, call.user);
    return { call, body, fallbacks, options, started };
  }

  prepareOther(
    endpoint: UpstreamEndpoint,
    model: string,
    body: Record<string, unknown>,
    options: CallOptions,
    promptTokens = 0,
  ): PreparedCall {
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
    const { field, salt, promptCacheKey } = this.options.identity;
    if (!user) return;
    // Opt-in: one prompt cache per end user (OpenAI routes requests with the same key to the same cache).
    if (promptCacheKey && body.prompt_cache_key == null) body.prompt_cache_key = hashUserId(user, salt);
    if (field === 'none' || body.safety_identifier != null || body.user != null) return;
    body[field] = hashUserId(user, salt);
  }

  /**
   * Every hook reserves at once; the hooks that hold on the store (token limits, budgets) as one atomic
   * store operation (on Redis: one script, one round trip). If one refuses, the holds of the others are
   * released and the first refusal, in hook order, is thrown.
   */
  async reserve(call: UpstreamCall): Promise<CallReservation[]> {
    if (this.reservers.length === 0) return [];
    const values: Array<Promise<CallReservation | void> | CallReservation | void> = [];
    let pending = 0;
    let waitAt = -1;
    for (const reserve of this.reservers) {
      let v;
      try {
        v = reserve(call);
      } catch (err) {
        v = Promise.reject(err);
      }
      if (v instanceof Promise) {
        pending++;
        waitAt = values.length;
      }
      values.push(v);
    }
    // Every hook answered without a promise (nothing held on a store): no waiting.
    if (pending === 0) return values.filter(isHeld);
    if (pending === 1) {
      // One wait (the joint hold on the store, as a rule): awaited alone, the others already answered.
      try {
        values[waitAt] = await values[waitAt];
      } catch (reason) {
        await this.release(values.filter(isHeld));
        throw this.refusals ? this.refusals.record(reason) : reason;
      }
      return values.filter(isHeld);
    }
    const outcomes = await Promise.allSettled(values.map(async (v) => v));
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
  settle(reservations: CallReservation[], result: SettledCall): void {
    let pending: Array<Promise<void>> | undefined;
    for (const r of reservations) {
      try {
        const done = r.settle(result);
        if (done instanceof Promise)
          (pending ??= []).push(done.catch((err: unknown) => this.settleFailed(err)));
      } catch (err) {
        this.settleFailed(err);
      }
    }
    if (!pending) return;
    const done = (pending.length === 1 ? pending[0] : Promise.all(pending)).then(() => undefined);
    this.pendingSettlements.add(done);
    void done.finally(() => this.pendingSettlements.delete(done));
  }

  private settleFailed(err: unknown): void {
    this.logger.error(
      `settling a reservation failed: ${redactSecrets(String((err as Error)?.message ?? err))}`,
    );
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

  private meta(
    prep: PreparedCall,
    ok: ExecutedCall<unknown>,
    usage: NormalizedUsage,
    serviceTier?: string,
  ): CallResultMeta {
    const meta: CallResultMeta = {
      model: ok.model,
      fallbackFrom: ok.fallbackFrom,
      openaiRequestId: ok.openaiRequestId,
      attempts: ok.attempts,
      latencyMs: performance.now() - prep.started,
      usage,
      costUsd: this.priceUsage(ok.model, usage, serviceTier),
      ...(serviceTier ? { serviceTier } : {}),
    };
    this.metrics.succeeded(
      prep.call,
      meta.model,
      meta.latencyMs,
      usage,
      meta.costUsd,
      meta.fallbackFrom,
      serviceTier,
    );
    return meta;
  }

  /**
   * Usage of a reply that came without any (some OpenAI-compatible servers and proxies send none): an
   * estimate marked `estimated`, from the prompt tokens counted before the call and the tokens of the
   * returned text. Without it such calls would be free for token limits and budgets.
   */
  private estimated(prep: PreparedCall, ok: ExecutedCall<unknown>, outputText: string): NormalizedUsage {
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
  priceUsage(model: string, usage: NormalizedUsage, serviceTier?: string): number | null {
    const cost = this.pricing.cost(model, usage, priceTierOf(serviceTier));
    if (cost === null) this.metrics.unpricedCall(model);
    return cost;
  }

  /** Logs the failure and returns the exception to throw. @internal */
  fail(prep: PreparedCall, err: unknown, span?: Span): HttpException {
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
        retries: attempts === undefined ? undefined : Math.max(0, attempts - 1),
      },
      fingerprintKey(this.client.apiKey),
    );
    if (span) failCallSpan(span, mapped, (mapped as { openaiRequestId?: string }).openaiRequestId);
    return mapped;
  }

  private baseLine(prep: PreparedCall) {
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
    prep: PreparedCall,
    status: 'ok' | 'incomplete' | 'cache_hit',
    result: CallResultMeta,
    body?: Record<string, unknown>,
    output?: string | null,
    /** Fields of a stream that failed: its error code and the upstream cause (redacted). */
    failure?: Record<string, unknown>,
  ): void {
    if (!this.options.logging.calls) return;
    const u = result.usage;
    const line: Record<string, unknown> = {
      msg: 'openai call',
      ...this.baseLine(prep),
      ...failure,
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
