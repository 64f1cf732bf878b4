import { randomUUID } from 'node:crypto';
import {
  Inject,
  Injectable,
  Logger,
  Optional,
  type OnModuleDestroy,
  type OnModuleInit,
} from '@nestjs/common';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { configuredModels, roomForView } from '../models/model-names.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { keyPart, type OpenAIStore } from '../storage/openai-store.interface.js';
import { readRateLimitHeaders, type UpstreamRateLimits } from './upstream-rate-limits.js';

/** The store channel (under its key prefix) that carries paced states between instances. */
export const PACING_CHANNEL = 'sync:pace';

/**
 * A model's limits as shared (JSON in the store under `pace:<project>:<model>`, and on `PACING_CHANNEL`
 * with `i`, `p` and `m`): the reply's remaining counts and resets (epoch ms) and when it was read.
 */
interface SharedLimits extends UpstreamRateLimits {
  /** Epoch ms when the reply was read: the newer of two views wins. */
  at?: number;
  /** Sender (messages; an instance ignores its own). */
  i?: string;
  /** Project (messages; another project's are ignored). */
  p?: string;
  /** Model (messages). */
  m?: string;
}

/** A model's limits as this instance knows them. */
interface PaceView {
  limits: UpstreamRateLimits;
  /** Epoch ms when the reply they come from was read (0: none yet). */
  at: number;
  /**
   * Epoch ms until which the last state shared (by any instance) paces the model; at or before now:
   * the last state shared is unpaced (or has expired).
   */
  shared: number;
}

/** A paced state extending the one shared by less than this (ms) is the same window: not shared again. */
const SAME_WINDOW_MS = 1_000;

/**
 * Adaptive pacing from OpenAI's own `x-ratelimit-*` headers (they describe the organization's limits,
 * and every reply brings fresh ones): each reply's remaining requests and tokens and their resets are
 * kept per model in this instance's view, and `waitFor` says from it, synchronously and without a store
 * round trip, how long a call to a model should wait before it is sent (0: go) when the organization's
 * budget for it is nearly spent. The remaining counts are also the gauges
 * `openai_upstream_remaining_requests{model}` and `..._tokens{model}`.
 *
 * Shared only when it matters: when a reply puts a model at or below `pacing.minRemainingRequests` /
 * `minRemainingTokens` (a call must wait), or lifts such a state before its reset, the state is written
 * once to the store (`pace:<project>:<model>`, kept until the reset) and published on the store's
 * channel `sync:pace` (Redis pub/sub): other instances apply it within the message's delivery
 * (milliseconds). Other replies cost no store operation. Each instance also re-reads the models it knows
 * from the store every `pacing.syncIntervalMs` in the background (and reads a model the first time it
 * meets it), so an instance that missed a message, or started after it, follows within that interval.
 */
@Injectable()
export class PacingService implements OnModuleInit, OnModuleDestroy {
  private readonly logger = new Logger('OpenAIPacing');
  private readonly views = new Map<string, PaceView>();
  private readonly id = randomUUID();
  private subscription?: { close(): Promise<void> };
  private timer?: NodeJS.Timeout;
  private syncing?: Promise<void>;
  private warned = false;
  /** The configured models: their views are never dropped to make room for another's. */
  private readonly configured: ReadonlySet<string>;

  constructor(
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Optional() private readonly metrics?: OpenAIMetricsService,
  ) {
    this.configured = configuredModels(options.models);
  }

  /** Room for a view of one more model (a view of a model not configured may go: the store keeps its state). */
  private room(): boolean {
    return roomForView(this.views, (model) => !this.configured.has(model));
  }

  get mode(): 'off' | 'queue' | 'refuse' {
    return this.options.pacing.mode;
  }

  private get project(): string {
    return this.options.project ?? 'default';
  }

  private key(model: string): string {
    return `pace:${keyPart(this.project)}:${keyPart(model)}`;
  }

  /**
   * Subscribes to the other instances' paced states, reads the configured models' state and starts the
   * periodic re-read. Never fails the boot.
   */
  async onModuleInit(): Promise<void> {
    if (this.mode === 'off') return;
    if (this.store.subscribe) {
      try {
        this.subscription = await this.store.subscribe(PACING_CHANNEL, {
          message: (m) => this.receive(m),
          resumed: () => void this.sync(),
        });
      } catch (err) {
        this.logger.warn(
          `paced states of other instances not received (${(err as Error)?.message}): they are re-read every ${this.options.pacing.syncIntervalMs} ms`,
        );
      }
    }
    for (const model of this.configured) this.meet(model);
    await this.sync();
    this.timer = setInterval(() => void this.sync(), this.options.pacing.syncIntervalMs);
    this.timer.unref();
  }

  async onModuleDestroy(): Promise<void> {
    clearInterval(this.timer);
    const sub = this.subscription;
    this.subscription = undefined;
    await sub?.close().catch(() => undefined);
  }

  /**
   * Reads a reply's headers (success or error) into the metrics and, when pacing is on, this instance's
   * view; shares the state when the model becomes paced (or stops being so before its reset).
   */
  observe(model: string, headers: { get(name: string): string | null } | undefined): void {
    const now = Date.now();
    const limits = readRateLimitHeaders(headers, now);
    if (!limits) return;
    this.metrics?.upstreamRemaining(model, limits.remainingRequests, limits.remainingTokens);
    if (this.mode === 'off') return;
    let v = this.views.get(model);
    if (!v) {
      if (!this.room()) return;
      this.views.set(model, (v = { limits, at: now, shared: 0 }));
    } else [v.limits, v.at] = [limits, now];
    const until = this.pacedUntil(limits, now);
    if (until > now ? v.shared <= now || until > v.shared + SAME_WINDOW_MS : v.shared > now)
      this.share(model, v, until, now);
  }

  /**
   * How long (ms) a call reserving `tokens` should wait before it is sent to `model`: until the reset
   * of a window whose remaining count is at or below its threshold (or, for tokens, below `tokens`);
   * 0 when it may go now or nothing is known. From this instance's view: no store round trip.
   */
  waitFor(model: string, tokens: number): number {
    if (this.mode === 'off') return 0;
    const v = this.views.get(model);
    if (!v) {
      this.meet(model);
      return 0;
    }
    const limits = v.limits;
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

  /** Epoch ms until which `limits` pace the model by the thresholds (0: they do not). */
  private pacedUntil(limits: UpstreamRateLimits, now: number): number {
    const { minRemainingRequests, minRemainingTokens } = this.options.pacing;
    let until = 0;
    if (limits.remainingRequests !== undefined && limits.remainingRequests <= minRemainingRequests)
      until = Math.max(until, limits.resetRequestsAt ?? 0);
    if (limits.remainingTokens !== undefined && limits.remainingTokens <= minRemainingTokens)
      until = Math.max(until, limits.resetTokensAt ?? 0);
    return until > now ? until : 0;
  }

  /** Writes the view to the store (for instances that start later or missed it) and publishes it. */
  private share(model: string, v: PaceView, until: number, now: number): void {
    v.shared = until;
    const value: SharedLimits = { ...v.limits, at: v.at };
    const ttl = Math.max(
      1_000,
      (v.limits.resetRequestsAt ?? now) - now,
      (v.limits.resetTokensAt ?? now) - now,
    );
    this.store.set(this.key(model), JSON.stringify(value), ttl).catch((err: unknown) => this.warn(err));
    this.store
      .publish?.(PACING_CHANNEL, JSON.stringify({ ...value, i: this.id, p: this.project, m: model }))
      .catch((err: unknown) => this.warn(err));
  }

  private receive(raw: string): void {
    let s: SharedLimits;
    try {
      s = JSON.parse(raw) as SharedLimits;
    } catch {
      return;
    }
    if (!s || s.i === this.id || s.p !== this.project || typeof s.m !== 'string') return;
    this.adopt(s.m, s);
  }

  /** Applies a shared state unless this instance's view comes from a newer reply. */
  private adopt(model: string, s: SharedLimits): void {
    const now = Date.now();
    const at = typeof s.at === 'number' ? s.at : 0;
    const limits: UpstreamRateLimits = {
      remainingRequests: s.remainingRequests,
      remainingTokens: s.remainingTokens,
      resetRequestsAt: s.resetRequestsAt,
      resetTokensAt: s.resetTokensAt,
    };
    const shared = this.pacedUntil(limits, now);
    let v = this.views.get(model);
    if (!v) this.views.set(model, (v = { limits, at, shared }));
    else {
      v.shared = shared;
      if (v.at > at) return;
      [v.limits, v.at] = [limits, at];
    }
    this.metrics?.upstreamRemaining(model, limits.remainingRequests, limits.remainingTokens);
  }

  /** A model met for the first time: known from now on, its shared state read in the background. */
  private meet(model: string): void {
    if (this.views.has(model) || !this.room()) return;
    this.views.set(model, { limits: {}, at: 0, shared: 0 });
    if (this.timer) void this.sync([model]);
  }

  /** Re-reads the shared state of `models` (default: every model this instance knows). */
  private sync(models?: Iterable<string>): Promise<void> {
    if (this.syncing && !models) return this.syncing;
    const run = Promise.all(
      [...(models ?? this.views.keys())].map(async (model) => {
        try {
          const raw = await this.store.get(this.key(model));
          if (raw) this.adopt(model, JSON.parse(raw) as SharedLimits);
        } catch (err) {
          this.warn(err);
        }
      }),
    ).then(() => undefined);
    if (!models) {
      this.syncing = run.finally(() => {
        this.syncing = undefined;
      });
      return this.syncing;
    }
    return run;
  }

  private warn(err: unknown): void {
    if (this.warned) return;
    this.warned = true;
    this.logger.warn(`pacing state not readable or writable, calls go unpaced: ${(err as Error)?.message}`);
  }
}
