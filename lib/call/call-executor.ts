import { HttpException, Logger } from '@nestjs/common';
import { APIConnectionTimeoutError, APIError, APIUserAbortError } from 'openai';
import {
  AttemptTimeoutError,
  CallAbortedException,
  describeError,
  mapUpstreamError,
  upstreamRequestId,
} from '../errors/map-upstream-error.js';
import {
  OpenAIUpstreamTimeoutException,
  UpstreamRetryLaterException,
} from '../errors/openai-http.exceptions.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import type { OpenAIMetricsService, StatusClass } from '../metrics/openai-metrics.service.js';
import { isRetryable, retryDelayMs, serverRetryAfterMs } from './retry-policy.js';
import type { Attempt, SentReply } from './endpoint-adapter.js';
import type { ExecutedCall, PreparedCall } from './prepared-call.js';
import type { BreakerTicket, CircuitBreakerService } from '../breaker/circuit-breaker.service.js';
import { UpstreamUnavailableException } from '../breaker/breaker.exceptions.js';
import type { PacingService } from '../pacing/pacing.service.js';

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
 * A wait the retry policy asks for (backoff, Retry-After, pacing): the time slept (ms), counted as
 * upstream time rather than pipeline overhead. @throws CallAbortedException when the caller aborts.
 */
async function policyWait(ms: number, signal: AbortSignal | undefined): Promise<number> {
  const started = performance.now();
  try {
    await sleep(ms, signal);
  } catch (e) {
    throw new CallAbortedException(e);
  }
  return performance.now() - started;
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
 * For the circuit breaker: did the model answer? A timeout, a connection error, 408, 409 or a 5xx is a
 * failure; any other status (a 429 too: the model is up, the project is limited) is an answer.
 */
function breakerOk(err: unknown): boolean {
  if (err instanceof AttemptTimeoutError || err instanceof APIConnectionTimeoutError) return false;
  const status = (err as { status?: unknown })?.status;
  if (typeof status !== 'number') return false;
  return !(status === 408 || status === 409 || status >= 500);
}

/** What the execute step consults besides the retry policy (all optional). */
export interface ExecutorGuards {
  breaker?: Pick<CircuitBreakerService, 'enabled' | 'admit' | 'report'>;
  pacing?: Pick<PacingService, 'mode' | 'observe' | 'waitFor'>;
}

/**
 * The execute step of the call pipeline, for every endpoint: attempts over the model and its
 * fallbacks, a per-attempt timeout and the call's deadline, exponential backoff with full jitter, the
 * server's `retry-after-ms` / `retry-after` (never slept past `retry.maxRetryAfterMs` or the deadline:
 * the next fallback goes at once, or the call fails with the wait passed on), `x-should-retry`, and the
 * caller's abort signal. The only retry owner (the SDK's own retries are off).
 */
export class CallExecutor {
  private readonly logger = new Logger('OpenAI');

  constructor(
    private readonly options: ResolvedOpenAIOptions,
    private readonly metrics: Pick<OpenAIMetricsService, 'attempt'>,
    private readonly guards: ExecutorGuards = {},
  ) {}

  /**
   * Runs attempts over the model and its fallbacks until one succeeds, an error is not retryable, or
   * the deadline leaves no room for another attempt. Each attempt runs under the SDK's own timeout
   * (`timeout`: the attempt's time, capped by the deadline; for a stream it covers the wait for the
   * reply's headers, and the stream then reads under its idle timer) and the caller's signal: no
   * controller or timer of the executor's own. An SDK timeout is reported as the attempt's or the
   * deadline's.
   */
  async execute<T>(
    prep: PreparedCall,
    attemptFn: (model: string, attempt: Attempt) => Promise<SentReply<T>>,
  ): Promise<ExecutedCall<T>> {
    const { options, started } = prep;
    const maxRetries = options.maxRetries ?? this.options.retry.maxRetries;
    const attemptMs = options.attemptTimeoutMs ?? this.options.timeouts.attemptMs;
    const deadlineAt = started + (options.deadlineMs ?? this.options.timeouts.deadlineMs);
    const models = [prep.call.model, ...prep.fallbacks];
    let attempts = 0;
    let lastErr: unknown;
    let lastModel = prep.call.model;
    let longWait: { ms: number; err: unknown } | undefined;
    // Time spent waiting on the upstream (attempts) and on its retry policy (backoff): what is not the
    // pipeline's own overhead.
    let upstreamMs = 0;
    const breaker = this.guards.breaker?.enabled ? this.guards.breaker : undefined;
    /** Models skipped by an open breaker, and the soonest one's wait. */
    let breakerSkips = 0;
    let breakerWaitMs = Infinity;
    const pacing = this.guards.pacing;
    /** Models skipped because OpenAI's remaining budget for them was spent, and the soonest reset. */
    let pacedSkips = 0;
    let pacedWaitMs = Infinity;
    let pacedModel = prep.call.model;

    outer: for (const model of models) {
      // Pacing first: a model that must wait does not take a half-open breaker's probe. Both answer from
      // their instance's view (no store round trip) unless the breaker's view says ask the store.
      if (pacing && pacing.mode !== 'off') {
        const wait = pacing.waitFor(model, prep.call.promptTokens + prep.call.maxOutputTokens);
        if (wait > 0) {
          const fits =
            pacing.mode === 'queue' &&
            wait <= this.options.retry.maxRetryAfterMs &&
            performance.now() + wait < deadlineAt;
          if (!fits) {
            if (wait < pacedWaitMs) [pacedWaitMs, pacedModel] = [wait, model];
            pacedSkips++;
            continue;
          }
          upstreamMs += await policyWait(wait, options.signal);
        }
      }
      let ticket: BreakerTicket | undefined;
      if (breaker) {
        const admitted = breaker.admit(model, attemptMs + 1_000);
        ticket = admitted instanceof Promise ? await admitted : admitted;
        if (!ticket.allowed) {
          breakerSkips++;
          breakerWaitMs = Math.min(breakerWaitMs, ticket.retryAfterMs);
          continue;
        }
      }
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
          upstreamMs += await policyWait(wait, options.signal);
        }
        const remaining = deadlineAt - performance.now();
        if (remaining <= 0) break outer;
        attempts++;
        lastModel = model;
        const timeoutMs = Math.min(attemptMs, remaining);
        const timeoutError = () =>
          new AttemptTimeoutError(timeoutMs < attemptMs ? 'deadline' : 'attempt', Math.round(timeoutMs));
        if (options.signal?.aborted) throw new CallAbortedException(options.signal.reason);
        const sent = performance.now();
        try {
          const { data, response, request_id } = await attemptFn(model, {
            signal: options.signal,
            timeoutMs: Math.ceil(timeoutMs),
          });
          upstreamMs += performance.now() - sent;
          pacing?.observe(model, response.headers);
          this.metrics.attempt(prep.call, model, '2xx', retry > 0);
          if (ticket) {
            // Nothing to write (no failure counted, not the probe): no promise, no await.
            const reported = breaker!.report(ticket, true);
            if (reported instanceof Promise) await reported;
          }
          return {
            data,
            response,
            openaiRequestId: request_id ?? response.headers.get('x-request-id') ?? undefined,
            model,
            fallbackFrom: model === prep.call.model ? undefined : prep.call.model,
            attempts,
            upstreamMs,
          };
        } catch (err) {
          upstreamMs += performance.now() - sent;
          if (options.signal?.aborted) throw new CallAbortedException(err);
          const error =
            err instanceof APIConnectionTimeoutError ? Object.assign(timeoutError(), { cause: err }) : err;
          if (error instanceof APIError) pacing?.observe(model, error.headers);
          this.metrics.attempt(prep.call, model, statusClassOf(error), retry > 0);
          if (error instanceof HttpException) throw error;
          lastErr = error;
          // An open breaker (opened by this failure, or a failed probe) stops this model: on to a fallback.
          const tripped =
            ticket !== undefined && (await breaker!.report(ticket, breakerOk(error))) === 'open';
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
          if (tripped) continue outer;
        }
      }
    }
    if (attempts === 0 && breakerSkips > 0) {
      throw Object.assign(new UpstreamUnavailableException(models, breakerWaitMs), { attempts });
    }
    if (attempts === 0 && pacedSkips > 0) {
      // Nothing sent: OpenAI's own limit for every candidate is spent until its reset.
      throw Object.assign(new UpstreamRetryLaterException(429, pacedWaitMs, pacedModel), { attempts });
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
}
