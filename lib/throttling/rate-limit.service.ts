import { Inject, Injectable } from '@nestjs/common';
import type {
  ResolvedOpenAIOptions,
  ThrottleWindow,
  TierLimits,
} from '../options/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import {
  subjectKey,
  trackerKey,
  type AdjustOp,
  type ConsumeOp,
  type ConsumeResult,
  type OpenAIStore,
  type WindowLimit,
  type WindowState,
} from '../storage/openai-store.interface.js';
import { StoreDegradedError } from '../storage/resilient.store.js';
import { StorageUnavailableException } from './rate-limit.exceptions.js';

/** The window to report in `x-ratelimit-*` headers: the one with the least room left. */
export function tightestWindow(windows: readonly WindowState[]): WindowState | undefined {
  let best: WindowState | undefined;
  for (const w of windows)
    if (!best || w.remaining < best.remaining || (w.remaining === best.remaining && w.resetMs > best.resetMs))
      best = w;
  return best;
}

/** `withBlock`: a request window's `blockDuration` goes to the store as `blockMs`. */
const toLimits = (windows: readonly ThrottleWindow[], withBlock = false): WindowLimit[] =>
  windows.map((w) => ({
    name: w.name,
    limit: w.limit,
    windowMs: w.ttl,
    ...(withBlock && w.blockDuration !== undefined ? { blockMs: w.blockDuration } : {}),
  }));

/**
 * Per-user request and token limits over the shared store: one atomic round trip per check.
 * Used by `OpenAIThrottlerGuard` (requests) and by `OpenAIService` (tokens); usable directly, e.g.
 * from a queue worker.
 */
@Injectable()
export class RateLimitService {
  constructor(
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
  ) {}

  /** The limits of `user`: its tier's, else the configured ones. */
  async limitsFor(user: string | undefined): Promise<Required<TierLimits>> {
    const { requests, tokens, tiers } = this.options.limits;
    const tier = user !== undefined && tiers ? await tiers(user) : undefined;
    return { requests: tier?.requests ?? requests, tokens: tier?.tokens ?? tokens };
  }

  /**
   * Counts one request against `windows` for `tracker` (all windows or none). The windows slide: at most
   * `limit` requests in any `ttl`; a window with `blockDuration` keeps the tracker refused that long
   * once it refuses.
   * @throws StorageUnavailableException (503) when the store is down and the policy is `fail-closed`.
   */
  hitRequest(tracker: string, windows: readonly ThrottleWindow[]): Promise<ConsumeResult> {
    return this.consume(trackerKey(tracker, 'rl:req'), toLimits(windows, true), 1);
  }

  /**
   * Reserves `tokens` against the token windows of `user` (all windows or none).
   * @throws StorageUnavailableException (503), as `hitRequest`.
   */
  reserveTokens(user: string, tokens: number, windows: readonly ThrottleWindow[]): Promise<ConsumeResult> {
    const op = this.tokenOp(user, tokens, windows);
    return this.consume(op.key, op.windows, op.cost);
  }

  /** The store consume of a token reservation (for the call pipeline's joint reservation). @internal */
  tokenOp(user: string, tokens: number, windows: readonly ThrottleWindow[]): ConsumeOp {
    return { key: subjectKey(user, 'rl:tok'), windows: toLimits(windows), cost: tokens };
  }

  /** The store adjust that corrects a token reservation by `delta` tokens. @internal */
  tokenAdjustOp(user: string, result: ConsumeResult, delta: number): AdjustOp {
    return {
      key: subjectKey(user, 'rl:tok'),
      windows: result.windows.map((w) => ({ name: w.name, start: w.start })),
      delta,
      ...(result.degraded ? { degraded: true } : {}),
    };
  }

  /**
   * Corrects a token reservation by `delta` tokens (negative: give back) in the windows it was taken
   * from: in the log entry it was counted in, while that entry is still counted (see `OpenAIStore.adjust`).
   */
  async adjustTokens(user: string, result: ConsumeResult, delta: number): Promise<void> {
    if (delta === 0) return;
    const op = this.tokenAdjustOp(user, result, delta);
    await this.store.adjust(op.key, op.windows, op.delta);
  }

  private async consume(key: string, windows: readonly WindowLimit[], cost: number): Promise<ConsumeResult> {
    if (windows.length === 0) return { allowed: true, windows: [] };
    try {
      return await this.store.consume(key, windows, cost);
    } catch (err) {
      if (err instanceof StoreDegradedError) throw new StorageUnavailableException(err);
      throw err;
    }
  }
}
