import { randomUUID } from 'node:crypto';
import { HttpStatus, Inject, Injectable } from '@nestjs/common';
import type { CallReservation, OpenAICallHook, UpstreamCall } from '../call/upstream-call.js';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { RequestContextStore } from '../request-context/request-context.js';
import { subjectKey, trackerKey, type OpenAIStore } from '../storage/openai-store.interface.js';
import { storageUnavailable } from '../throttling/rate-limit.exceptions.js';

/** 429: the user already has `limits.maxInFlight` upstream calls in flight. */
export class ConcurrencyLimitExceededException extends OpenAIHttpException {
  readonly headers: Record<string, string>;
  constructor(limit: number, retryAfterS: number) {
    super(
      HttpStatus.TOO_MANY_REQUESTS,
      'concurrency_limit_exceeded',
      `At most ${limit} calls in flight at once; retry when one has finished`,
      { extra: { limit: 'in_flight', max_in_flight: limit, retry_after: retryAfterS } },
    );
    this.headers = { 'retry-after': String(retryAfterS) };
  }
}

/**
 * The in-flight cap per user (OWASP LLM10), shared by every instance on the store: `reserve` takes one
 * of the user's `limits.maxInFlight` slots (a slot id with an expiry, `acquireSlot`), and settling or
 * releasing the call frees it; so does its expiry when the instance that took it died. The slot's TTL
 * is `limits.inFlightTtlMs`, by default the call's deadline plus 5 s: no call (a stream included) runs
 * past its deadline, so a live call never loses its slot. Anonymous requests count by their tracker.
 */
@Injectable()
export class ConcurrencyLimitHook implements OpenAICallHook {
  constructor(
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
  ) {}

  reserve(call: UpstreamCall): Promise<CallReservation | void> | void {
    // Off (the default): no slot, no promise.
    if (!this.options.limits.maxInFlight) return;
    return this.take(call, this.options.limits.maxInFlight);
  }

  private async take(call: UpstreamCall, limit: number): Promise<CallReservation | void> {
    const key = call.user
      ? subjectKey(call.user, 'inflight')
      : call.tracker
        ? trackerKey(call.tracker, 'inflight')
        : undefined;
    if (!key) return;
    const ttlMs = this.options.limits.inFlightTtlMs ?? this.options.timeouts.deadlineMs + 5_000;
    const id = randomUUID();
    const slot = await this.store.acquireSlot(key, id, limit, ttlMs).catch(storageUnavailable);
    if (!slot.acquired) {
      // A slot is usually freed long before it would expire (when a call ends): retry soon.
      const retryAfter = 1;
      RequestContextStore.setHeader('retry-after', retryAfter);
      throw new ConcurrencyLimitExceededException(limit, retryAfter);
    }
    let done = false;
    const free = async () => {
      if (done) return;
      done = true;
      await this.store.releaseSlot(key, id);
    };
    return { settle: free, release: free };
  }
}
