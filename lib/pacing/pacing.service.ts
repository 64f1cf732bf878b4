import { Inject, Injectable, Logger, Optional } from '@nestjs/common';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { keyPart, type OpenAIStore } from '../storage/openai-store.interface.js';
import { readRateLimitHeaders, type UpstreamRateLimits } from './upstream-rate-limits.js';

/**
 * Adaptive pacing from OpenAI's own `x-ratelimit-*` headers: every reply's remaining requests and
 * tokens and their resets are kept per model and project in the shared store (one write per reply,
 * off the request path), and `waitFor` says how long a call to a model should wait before it is sent
 * (0: go) when the organization's budget for it is nearly spent. The remaining counts are also the
 * gauges `openai_upstream_remaining_requests{model}` and `..._tokens{model}`.
 */
@Injectable()
export class PacingService {
  private readonly logger = new Logger('OpenAIPacing');
  private warned = false;

  constructor(
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Optional() private readonly metrics?: OpenAIMetricsService,
  ) {}

  get mode(): 'off' | 'queue' | 'refuse' {
    return this.options.pacing.mode;
  }

  private key(model: string): string {
    return `pace:${keyPart(this.options.project ?? 'default')}:${keyPart(model)}`;
  }

  /** Reads a reply's headers (success or error) into the metrics and, when pacing is on, the store. */
  observe(model: string, headers: { get(name: string): string | null } | undefined): void {
    const now = Date.now();
    const limits = readRateLimitHeaders(headers, now);
    if (!limits) return;
    this.metrics?.upstreamRemaining(model, limits.remainingRequests, limits.remainingTokens);
    if (this.mode === 'off') return;
    const ttl = Math.max(1_000, (limits.resetRequestsAt ?? now) - now, (limits.resetTokensAt ?? now) - now);
    this.store.set(this.key(model), JSON.stringify(limits), ttl).catch((err: unknown) => this.warn(err));
  }

  /**
   * How long (ms) a call reserving `tokens` should wait before it is sent to `model`: until the reset
   * of a window whose remaining count is at or below its threshold (or, for tokens, below `tokens`);
   * 0 when it may go now or nothing is known.
   */
  async waitFor(model: string, tokens: number): Promise<number> {
    if (this.mode === 'off') return 0;
    let limits: UpstreamRateLimits;
    try {
      const raw = await this.store.get(this.key(model));
      if (!raw) return 0;
      limits = JSON.parse(raw) as UpstreamRateLimits;
    } catch (err) {
      this.warn(err);
      return 0;
    }
    const now = Date.now();
    const { minRemainingRequests, minRemainingTokens } = this.options.pacing;
    let wait = 0;
    if (
      limits.remainingRequests !== undefined &&
      limits.remainingRequests <= minRemainingRequests &&
      (limits.resetRequestsAt ?? 0) > now
    )
      wait = Math.max(wait, limits.resetRequestsAt! - now);
    if (
      limits.remainingTokens !== undefined &&
      (limits.remainingTokens <= minRemainingTokens || limits.remainingTokens < tokens) &&
      (limits.resetTokensAt ?? 0) > now
    )
      wait = Math.max(wait, limits.resetTokensAt! - now);
    return wait;
  }

  private warn(err: unknown): void {
    if (this.warned) return;
    this.warned = true;
    this.logger.warn(`pacing state not readable or writable, calls go unpaced: ${(err as Error)?.message}`);
  }
}
