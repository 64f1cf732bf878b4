import { Injectable } from '@nestjs/common';
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
export class TokenLimitHook implements OpenAICallHook {
  constructor(
    private readonly limits: RateLimitService,
    private readonly metrics: OpenAIMetricsService,
  ) {}

  async reserve(call: UpstreamCall): Promise<CallReservation | void> {
    // Anonymous callers are token-limited by their tracker (client IP), as request limits are.
    const subject = call.user ?? call.tracker;
    if (subject === undefined || call.endpoint === 'moderations') return;
    const { tokens } = await this.limits.limitsFor(call.user);
    if (tokens.length === 0) return;
    const reserved = call.promptTokens + call.maxOutputTokens;
    const tooBig = tokens.find((w) => reserved > w.limit);
    if (tooBig) throw new TokenReservationTooLargeException(tooBig.name, reserved, tooBig.limit);
    const result = await this.limits.reserveTokens(subject, reserved, tokens);
    if (!result.allowed) {
      const w = result.blockedBy!;
      const retryAfter = Math.max(1, Math.ceil(w.resetMs / 1000));
      RequestContextStore.setHeader('retry-after', retryAfter);
      // The headers describe the window that refused the request, not the request window the guard reported.
      RequestContextStore.setHeader('x-ratelimit-limit', w.limit);
      RequestContextStore.setHeader('x-ratelimit-remaining', w.remaining);
      RequestContextStore.setHeader('x-ratelimit-reset', retryAfter);
      this.metrics.rateLimited('tokens', w.name);
      throw new RateLimitExceededException('tokens', w.name, w.limit, retryAfter);
    }
    const user = subject;
    let done = false;
    return {
      settle: async (settled: SettledCall) => {
        if (done) return;
        done = true;
        await this.limits.adjustTokens(user, result, settled.usage.total_tokens - reserved);
      },
      release: async () => {
        if (done) return;
        done = true;
        await this.limits.adjustTokens(user, result, -reserved);
      },
    };
  }
}
