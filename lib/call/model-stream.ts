import { HttpException } from '@nestjs/common';
import type { Span } from '@opentelemetry/api';
import { endCallSpan, failCallSpan } from '../telemetry/call-span.js';
import type OpenAI from 'openai';
import { APIError } from 'openai';
import { AttemptTimeoutError, CallAbortedException, describeError } from '../errors/map-upstream-error.js';
import { OpenAIUpstreamException, OpenAIUpstreamTimeoutException } from '../errors/openai-http.exceptions.js';
import { ContentFlaggedException } from '../moderation/moderation.exceptions.js';
import { estimateUsage, type CallPipeline } from './call-pipeline.js';
import {
  UpstreamStreamError,
  type StreamAdapter,
  type StreamProgress,
  type UpstreamEventStream,
} from './endpoint-adapter.js';
import type { ExecutedCall, PreparedCall } from './prepared-call.js';
import type { CallReservation, CallResultMeta } from './upstream-call.js';

type ChatCompletionChunk = OpenAI.Chat.Completions.ChatCompletionChunk;
type ResponseStreamEvent = OpenAI.Responses.ResponseStreamEvent;

/** A moderation verdict. */
type Verdict = { flagged: boolean; categories: string[] };

/** How a stream's output is moderated. @internal */
export interface StreamOutputCheck {
  /** Checks the text with the moderations endpoint (at intervals, and at the end). */
  endpoint(text: string): Promise<Verdict>;
  /** When the call asked for in-request moderation: the verdict of the upstream's result, if usable. */
  inRequest?: (result: unknown) => Verdict | undefined;
}

/** Summary of a finished stream, resolved by `ChatStream.finished` / `ResponseStream.finished`. */
export interface StreamSummary extends CallResultMeta {
  content: string;
  finishReason: string | null;
}

/**
 * A streamed call, for any streaming endpoint (its adapter reads the events): iterate it once for the
 * SDK's events. `finished` resolves with the summary (real usage, or an estimate flagged
 * `usage.estimated` when the stream was cut) or rejects with the mapped error. `abort()` cancels it; a
 * consumer that stops iterating aborts it too. Idle and deadline timers, accumulation, and one settlement.
 */
export class ModelStream<Event> implements AsyncIterable<Event> {
  /** The controller the upstream request runs under (the SDK stream's): aborting it ends the stream. */
  private readonly controller: AbortController;
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
    private readonly service: CallPipeline,
    private readonly prep: PreparedCall,
    private readonly ok: ExecutedCall<UpstreamEventStream<Event>>,
    private readonly reservations: CallReservation[],
    private readonly adapter: StreamAdapter<Event>,
    private readonly outputCheck?: StreamOutputCheck,
    private readonly span?: Span,
  ) {
    this.controller = ok.data.controller;
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
      this.controller.abort(reason);
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
    this.controller.abort(new CallAbortedException());
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Event> {
    if (this.consumed) throw new Error('A stream can be iterated once');
    this.consumed = true;
    clearTimeout(this.unconsumedTimer);
    if (this.ended) throw this.mapStreamError(new AttemptTimeoutError('idle', 0));
    const { controller } = this;
    const options = this.service.options;
    const idleMs = this.prep.options.attemptTimeoutMs ?? options.timeouts.attemptMs;
    const deadlineAt = this.prep.started + (this.prep.options.deadlineMs ?? options.timeouts.deadlineMs);
    let timedOut: AttemptTimeoutError | undefined;
    // The idle timer is armed once; an event only notes its time. When the timer fires it re-arms for
    // what is left of the idle period since the last event (or of the deadline), or aborts the stream.
    let lastEventAt = performance.now();
    const untilDue = (now: number) => Math.min(lastEventAt + idleMs, deadlineAt) - now;
    const onTimer = () => {
      const now = performance.now();
      const left = untilDue(now);
      if (left >= 1) {
        timer = setTimeout(onTimer, left);
        return;
      }
      const deadline = deadlineAt <= lastEventAt + idleMs;
      timedOut = new AttemptTimeoutError(
        deadline ? 'deadline' : 'idle',
        Math.round(deadline ? now - lastEventAt : idleMs),
      );
      controller.abort(timedOut);
    };
    let timer = setTimeout(onTimer, Math.max(1, untilDue(lastEventAt)));
    const callerSignal = this.prep.options.signal;
    // The SDK also ends the stream on the caller's signal (it was given it): either way, a caller's abort.
    const onCallerAbort = () => controller.abort(new CallAbortedException(callerSignal?.reason));
    callerSignal?.addEventListener('abort', onCallerAbort, { once: true });
    const callerAborted = () =>
      callerSignal?.aborted ? new CallAbortedException(callerSignal.reason) : undefined;
    const p = this.progress;
    let failure: unknown;
    let completed = false;
    try {
      let checked = 0;
      const interval = options.moderation.streamCheckIntervalChars;
      for await (const event of this.ok.data) {
        lastEventAt = performance.now();
        this.adapter.read(event, p);
        // The moderations endpoint checks the text as it grows; in-request moderation judges it at the end.
        if (this.outputCheck && !this.outputCheck.inRequest && p.text.length - checked >= interval) {
          checked = p.text.length;
          await this.checkOutput();
        }
        yield event;
        // A terminal failure event (`response.failed`, an `error` event) ends the stream here.
        if (p.failure) break;
      }
      if (!p.failure && this.outputCheck && p.text.length > checked) await this.checkOutput(true);
      completed = !p.failure && this.adapter.isComplete(p, this.ok.response) && !controller.signal.aborted;
      if (!completed)
        failure =
          p.failure ??
          timedOut ??
          callerAborted() ??
          controller.signal.reason ??
          new Error('stream ended before its end event');
    } catch (err) {
      failure = timedOut ?? callerAborted() ?? err;
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
  private async checkOutput(atEnd = false): Promise<void> {
    const check = this.outputCheck!;
    // At the end, the upstream's in-request verdict when the call asked for one and it is usable;
    // otherwise (absent, an error object) the moderations endpoint.
    const verdict =
      (atEnd && check.inRequest ? check.inRequest(this.progress.moderation) : undefined) ??
      (await check.endpoint(this.progress.text));
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
      costUsd: this.service.priceUsage(this.model, usage, p.serviceTier),
      ...(p.serviceTier ? { serviceTier: p.serviceTier } : {}),
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
      p.serviceTier,
    );
    // What was received is accounted even when the stream failed: output was produced and billed.
    this.service.settle(this.reservations, summary);
    if (completed) {
      this.service.logCall(this.prep, 'ok', summary, this.prep.body, p.text);
      if (this.span) endCallSpan(this.span, summary);
      this.resolveFinished(summary);
      return;
    }
    const err = this.mapStreamError(failure);
    (err as { summary?: StreamSummary }).summary = summary;
    // A stream the upstream failed (not one the client left or output moderation stopped) is an upstream
    // error for the metrics, and its log line says why.
    let detail: Record<string, unknown> | undefined;
    if (!(failure instanceof CallAbortedException) && !(failure instanceof ContentFlaggedException)) {
      const code = (err.getResponse() as { error?: string }).error ?? 'upstream_error';
      this.service.metrics.failed(this.prep.call, code);
      const upstreamCode =
        failure instanceof APIError && typeof failure.code === 'string'
          ? failure.code
          : failure instanceof UpstreamStreamError
            ? failure.code
            : undefined;
      detail = { error: code, upstream_code: upstreamCode, cause: describeError(failure) };
    }
    this.service.logCall(this.prep, 'incomplete', summary, this.prep.body, p.text, detail);
    if (this.span) failCallSpan(this.span, err, this.openaiRequestId);
    this.rejectFinished(err);
  }
}

/** A streamed chat completion (`OpenAIService.stream()`): iterate it once for the SDK's chunks. */
export class ChatStream extends ModelStream<ChatCompletionChunk> {}

/** A streamed Responses API call (`OpenAIService.streamResponse()`): iterate it once for the SDK's typed events. */
export class ResponseStream extends ModelStream<ResponseStreamEvent> {}
