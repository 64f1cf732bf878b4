import { Inject, Injectable } from '@nestjs/common';
import { holdOne, type HoldPlan, type PlannedHook } from '../call/reservation-plan.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import type { ResolvedOpenAIOptions, ThrottleWindow } from '../options/openai-module-options.interface.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import type { CallReservation, OpenAICallHook, SettledCall, UpstreamCall } from '../call/upstream-call.js';
import { RequestContextStore } from '../request-context/request-context.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { RateLimitExceededException, TokenReservationTooLargeException } from './rate-limit.exceptions.js';
import { RateLimitService } from './rate-limit.service.js';

/**
 * Token limits, enforced where the call is made (so they hold outside HTTP too): reserves the prompt's
 * tokens plus `max_tokens` before the call, settles to `usage.total_tokens` after it, and releases the
 * reservation on every other ending. An anonymous request is limited by its tracker (`ip:<client IP>`);
 * a call outside HTTP without a user is not token-limited.
 */
@Injectable()
export class TokenLimitHook implements OpenAICallHook, PlannedHook {
  constructor(
    private readonly limits: RateLimitService,
    private readonly metrics: OpenAIMetricsService,
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
  ) {}

  /** Reserves alone (outside the call pipeline, which joins `plan` with the budgets' holds). */
  async reserve(call: UpstreamCall): Promise<CallReservation | void> {
    return holdOne(this.store, await this.plan(call));
  }

  /**
   * The token reservation of `call` as a store consume: the prompt's tokens plus `max_tokens` against
   * every token window of its user (or tracker); settled to `usage.total_tokens`, released on any other
   * ending. Undefined when no token limit applies.
   * @throws TokenReservationTooLargeException (429) when the reservation exceeds a window's whole limit.
   */
  plan(call: UpstreamCall): HoldPlan | undefined | Promise<HoldPlan | undefined> {
    // Anonymous callers are token-limited by their tracker (client IP), as request limits are.
    const subject = call.user ?? call.tracker;
    if (subject === undefined || call.endpoint === 'moderations') return undefined;
    // Without tiers the limits are the configured ones: no lookup, no promise.
    if (this.options.limits.tiers)
      return this.limits.limitsFor(call.user).then(({ tokens }) => this.planTokens(call, subject, tokens));
    return this.planTokens(call, subject, this.options.limits.tokens);
  }

  private planTokens(
    call: UpstreamCall,
    subject: string,
    tokens: readonly ThrottleWindow[],
  ): HoldPlan | undefined {
    if (tokens.length === 0) return undefined;
    const reserved = call.promptTokens + call.maxOutputTokens;
    const tooBig = tokens.find((w) => reserved > w.limit);
    if (tooBig) throw new TokenReservationTooLargeException(tooBig.name, reserved, tooBig.limit);
    return {
      ops: [this.limits.tokenOp(subject, reserved, tokens)],
      admitted: ([result]) => ({
        settle: (s: SettledCall) => [
          this.limits.tokenAdjustOp(subject, result, s.usage.total_tokens - reserved),
        ],
        release: () => [this.limits.tokenAdjustOp(subject, result, -reserved)],
      }),
      refusal: (_i, result) => {
        const w = result.blockedBy!;
        const retryAfter = Math.max(1, Math.ceil(w.resetMs / 1000));
        RequestContextStore.setHeader('retry-after', retryAfter);
        // The headers describe the window that refused the request, not the request window the guard reported.
        RequestContextStore.setHeader('x-ratelimit-limit', w.limit);
        RequestContextStore.setHeader('x-ratelimit-remaining', w.remaining);
        RequestContextStore.setHeader('x-ratelimit-reset', retryAfter);
        this.metrics.rateLimited('tokens', w.name);
        return new RateLimitExceededException('tokens', w.name, w.limit, retryAfter);
      },
    };
  }
}
