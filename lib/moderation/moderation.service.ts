import { Inject, Injectable, Logger } from '@nestjs/common';
import { createHash } from 'node:crypto';
import type { ModerationCheckOptions } from '../call/upstream-call.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import { CallPipeline } from '../call/call-pipeline.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import { ModerationUnavailableException } from './moderation.exceptions.js';
import { validateModerationReply } from './moderation-reply.schema.js';

/** Verdict of one moderation check over one or more texts. */
export interface ModerationVerdict {
  flagged: boolean;
  /** Flagged category names (sorted, unique). */
  categories: string[];
  /** True when the endpoint failed and the policy let the text through. */
  failedOpen?: boolean;
}

/** What is cached per text: OpenAI's verdict per category and the scores. */
interface CachedResult {
  c: Record<string, boolean>;
  s: Record<string, number>;
}

const hashText = (t: string) => createHash('sha256').update(t).digest('base64url');

/**
 * Moderates texts with the moderations endpoint: all uncached texts of a check in one call (array
 * input), verdicts cached per text hash in the shared store, per-category thresholds, and the failure
 * policy. Used by `ModerationPipe` (input) and `OpenAIService` (output). Calls the moderations
 * endpoint through the call pipeline (retries, timeouts, log line), not through `OpenAIService`.
 */
@Injectable()
export class ModerationService {
  private readonly logger = new Logger('OpenAIModeration');

  constructor(
    private readonly pipeline: CallPipeline,
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    private readonly metrics: OpenAIMetricsService,
  ) {}

  /**
   * Moderates `texts` (empty strings ignored).
   * @throws ModerationUnavailableException (503) when the endpoint fails and the policy is `fail-closed`.
   */
  async check(
    texts: readonly string[],
    direction: 'input' | 'output',
    overrides: ModerationCheckOptions = {},
  ): Promise<ModerationVerdict> {
    const opts = this.merged(overrides);
    const unique = [...new Set(texts.filter((t) => t.trim() !== ''))];
    if (unique.length === 0) return { flagged: false, categories: [] };
    const ttl = this.options.moderation.cacheTtlMs;
    let results: CachedResult[];
    try {
      const cached =
        ttl > 0 ? await Promise.all(unique.map((t) => this.cacheGet(t))) : unique.map(() => undefined);
      const missing = unique.filter((_, i) => cached[i] === undefined);
      let fresh: CachedResult[] = [];
      if (missing.length) {
        const r = await this.pipeline.moderate(missing, {
          // timeoutMs bounds the whole check; a quick failure leaves room for the one retry.
          attemptTimeoutMs: opts.timeoutMs,
          deadlineMs: opts.timeoutMs,
          maxRetries: 1,
          fallbacks: false,
        });
        fresh = r.response.results.map((x) => ({
          c: { ...x.categories } as Record<string, boolean>,
          s: { ...x.category_scores } as Record<string, number>,
        }));
        // The categories this check filters or thresholds on must have been judged: a reply that left
        // one out says nothing about it, so it is a moderation failure, not a pass.
        const required = [...(opts.categories ?? []), ...Object.keys(opts.thresholds)];
        const missed = required.find((c) => fresh.some((f) => f.c[c] === undefined || f.s[c] === undefined));
        if (missed !== undefined) throw new Error(`moderation reply has no verdict for category "${missed}"`);
        if (ttl > 0)
          await Promise.all(
            missing.map((t, i) =>
              this.store.set(this.cacheKey(t), JSON.stringify(fresh[i]), ttl).catch(() => undefined),
            ),
          );
      }
      let j = 0;
      results = cached.map((c) => c ?? fresh[j++]);
    } catch (err) {
      this.metrics.moderation(direction, 'error');
      if (opts.onError === 'fail-open') {
        this.logger.warn(
          `moderation unavailable, ${direction} let through (fail-open): ${(err as Error)?.message ?? String(err)}`,
        );
        return { flagged: false, categories: [], failedOpen: true };
      }
      throw new ModerationUnavailableException(err);
    }
    return this.judge(results, opts, direction);
  }

  /**
   * The verdict of moderation results returned inside a chat or Responses reply (`moderation.output`,
   * asked for with `moderation: { model }` in the request): the same categories, thresholds and metrics
   * as `check()`, with no extra round trip. `undefined` when the reply carries no usable result (absent,
   * an `error` object, or not one well-formed result per input): then check with `check()` instead.
   */
  verdictOf(
    inRequest: unknown,
    direction: 'input' | 'output',
    overrides: ModerationCheckOptions = {},
  ): ModerationVerdict | undefined {
    // Chat carries `{ type: 'moderation_results', results: [...] }`; Responses one `moderation_result`.
    const reply =
      (inRequest as { type?: unknown } | null)?.type === 'moderation_result'
        ? { results: [inRequest] }
        : inRequest;
    const checked = validateModerationReply(
      reply,
      (reply as { results?: unknown[] } | null)?.results?.length ?? 1,
    );
    if (!checked.ok || checked.results.length === 0) return undefined;
    const opts = this.merged(overrides);
    const results = checked.results.map((x) => ({
      c: { ...x.categories } as Record<string, boolean>,
      s: { ...x.category_scores } as Record<string, number>,
    }));
    const required = [...(opts.categories ?? []), ...Object.keys(opts.thresholds)];
    if (required.some((c) => results.some((f) => f.c[c] === undefined || f.s[c] === undefined)))
      return undefined;
    return this.judge(results, opts, direction);
  }

  private merged(overrides: ModerationCheckOptions) {
    // Unset overrides (the pipe passes `{ onError: undefined, ... }` for a route without them) keep the module's values.
    const set = Object.fromEntries(
      Object.entries(overrides).filter(([, v]) => v !== undefined),
    ) as ModerationCheckOptions;
    return {
      ...this.options.moderation,
      ...set,
      thresholds: { ...this.options.moderation.thresholds, ...set.thresholds },
    };
  }

  private judge(
    results: readonly CachedResult[],
    opts: ReturnType<ModerationService['merged']>,
    direction: 'input' | 'output',
  ): ModerationVerdict {
    const flagged = new Set<string>();
    const only = opts.categories ? new Set(opts.categories) : undefined;
    for (const r of results) {
      for (const [cat, verdict] of Object.entries(r.c)) {
        if (only && !only.has(cat)) continue;
        const t = opts.thresholds[cat];
        if (t !== undefined ? (r.s[cat] ?? 0) >= t : verdict) flagged.add(cat);
      }
    }
    const categories = [...flagged].sort();
    this.metrics.moderation(direction, categories.length ? 'flagged' : 'clean', categories);
    return { flagged: categories.length > 0, categories };
  }

  /** Verdicts depend on the model: a new moderation model does not reuse the old one's. */
  private cacheKey(text: string): string {
    return `mod:${this.options.models.moderation}:${hashText(text)}`;
  }

  private async cacheGet(text: string): Promise<CachedResult | undefined> {
    const raw = await this.store.get(this.cacheKey(text)).catch(() => undefined);
    if (!raw) return undefined;
    try {
      return JSON.parse(raw) as CachedResult;
    } catch {
      return undefined;
    }
  }
}
