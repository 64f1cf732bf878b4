import { Inject, Injectable } from '@nestjs/common';
import type { ThrottlerStorage } from '@nestjs/throttler';
import { OPENAI_STORE } from '../openai.constants.js';
import { keyPart, type ConsumeResult, type OpenAIStore } from '../storage/openai-store.interface.js';
import { StoreDegradedError } from '../storage/resilient.store.js';
import { StorageUnavailableException } from './rate-limit.exceptions.js';

/** Record returned to `@nestjs/throttler`'s guard (its `ThrottlerStorageRecord`). */
export interface OpenAIThrottlerStorageRecord {
  totalHits: number;
  /** Seconds until the window has more room (its oldest hit is freed). */
  timeToExpire: number;
  isBlocked: boolean;
  /** Seconds until a blocked key may try again. */
  timeToBlockExpire: number;
}

/**
 * `@nestjs/throttler` storage over the library's store: bounded memory without a timer per hit, or
 * Redis shared by every instance, one atomic round trip per hit. For apps that keep the plain
 * `ThrottlerGuard` on other routes: `ThrottlerModule.forRootAsync({ inject: [OpenAIThrottlerStorage],
 * useFactory: (storage) => ({ throttlers: [...], storage }) })`. The window slides (never more than
 * `limit` hits in any `ttl`) and a refused hit counts for nothing; `blockDuration` (the guard passes the
 * `ttl` when unset) keeps the key blocked that long from its first refused hit, even beyond the window.
 */
@Injectable()
export class OpenAIThrottlerStorage implements ThrottlerStorage {
  constructor(@Inject(OPENAI_STORE) private readonly store: OpenAIStore) {}

  async increment(
    key: string,
    ttl: number,
    limit: number,
    blockDuration: number,
    throttlerName: string,
  ): Promise<OpenAIThrottlerStorageRecord> {
    let r: ConsumeResult;
    try {
      r = await this.store.consume(
        `thr:${keyPart(key)}`,
        [{ name: keyPart(throttlerName), limit, windowMs: ttl, blockMs: Math.max(0, blockDuration || 0) }],
        1,
      );
    } catch (err) {
      // The store is down under `fail-closed`: a 503 as from OpenAIThrottlerGuard, not a 500.
      if (err instanceof StoreDegradedError) throw new StorageUnavailableException(err);
      throw err;
    }
    const w = r.windows[0];
    const seconds = Math.ceil(w.resetMs / 1000);
    return {
      // A refused hit is one over the limit (the guard's remaining header is limit - totalHits).
      totalHits: r.allowed ? w.used : Math.max(w.used, limit) + 1,
      timeToExpire: seconds,
      isBlocked: !r.allowed,
      timeToBlockExpire: r.allowed ? 0 : Math.max(1, seconds),
    };
  }
}
