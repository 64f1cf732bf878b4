import { Inject, Injectable, type ExecutionContext } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { ThrottlerGuard } from '@nestjs/throttler';
import { RequestIdentityService } from '../identity/request-identity.service.js';
import { RefusalRecorder } from '../call/refusal.recorder.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import type { ResolvedOpenAIOptions, ThrottleWindow } from '../interfaces/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';
import { rawResponse } from '../utils/http.js';
import { OpenAIThrottlerStorage } from './openai-throttler.storage.js';
import { RateLimitExceededException } from './rate-limit.exceptions.js';
import { RateLimitService, tightestWindow } from './rate-limit.service.js';

// Metadata keys written by @nestjs/throttler's @Throttle() and @SkipThrottle() (key + throttler name).
const THROTTLER_LIMIT = 'THROTTLER:LIMIT';
const THROTTLER_TTL = 'THROTTLER:TTL';
const THROTTLER_SKIP = 'THROTTLER:SKIP';
const COUNTED = Symbol.for('OPENAI:THROTTLE_COUNTED');

/**
 * Per-user request limits, on `@nestjs/throttler`'s guard. Differences from `ThrottlerGuard`:
 * - the tracker is the user from the identity resolver (`identity.resolve`; default `req.user.id`, `sub`,
 *   `userId`), the client IP only for anonymous requests;
 * - all windows are checked and counted in one atomic store operation (one Redis round trip), and a
 *   refused request counts against none;
 * - tiers (`limits.tiers`) give each user its own windows;
 * - a request is counted once even when the guard is both global (`APP_GUARD`) and on the route;
 * - sets `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (s) for the tightest window and,
 *   on 429, `retry-after` (s).
 * `@Throttle({ minute: { limit, ttl } })` overrides a window on a route or controller (the overridden
 * window is then counted per route, as `@nestjs/throttler` does), `@SkipThrottle()` skips all windows
 * (or `@SkipThrottle({ minute: true })` one).
 *
 * @example @UseGuards(OpenAIThrottlerGuard) @Post('chat') chat() {}
 */
@Injectable()
export class OpenAIThrottlerGuard extends ThrottlerGuard {
  constructor(
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly openaiOptions: ResolvedOpenAIOptions,
    // Every parameter names its token: @Inject metadata is inherited from ThrottlerGuard's constructor.
    @Inject(RateLimitService) private readonly limiter: RateLimitService,
    @Inject(OpenAIThrottlerStorage) storage: OpenAIThrottlerStorage,
    @Inject(Reflector) reflector: Reflector,
    @Inject(OpenAIMetricsService) private readonly metrics: OpenAIMetricsService,
    @Inject(RequestIdentityService) private readonly identity: RequestIdentityService,
    @Inject(RefusalRecorder) private readonly refusals: RefusalRecorder,
  ) {
    super(
      {
        throttlers: openaiOptions.limits.requests.map((w) => ({ name: w.name, limit: w.limit, ttl: w.ttl })),
      },
      storage,
      reflector,
    );
  }

  override async onModuleInit(): Promise<void> {
    // The base logs a warning when no throttler is configured; here no request window is a valid setup
    // (token limits or tiers only).
    this.throttlers = [];
  }

  override async canActivate(context: ExecutionContext): Promise<boolean> {
    if (context.getType() !== 'http') return true;
    const { req, res } = this.getRequestResponse(context);
    try {
      return await this.check(context, req, res);
    } catch (err) {
      throw this.refusals.record(err, req);
    }
  }

  private async check(
    context: ExecutionContext,
    req: Record<string, any>,
    res: Record<string, any>,
  ): Promise<boolean> {
    if ((req as Record<symbol, unknown>)[COUNTED]) return true;
    if (await this.shouldSkip(context)) return true;
    const handler = context.getHandler();
    const classRef = context.getClass();
    // `@SkipThrottle()` without arguments marks the `default` throttler: here it skips the route.
    if (this.reflector.getAllAndOverride<boolean>(THROTTLER_SKIP + 'default', [handler, classRef]))
      return true;
    const tracker = await this.getTracker(req);
    const user = tracker.startsWith('user:') ? tracker.slice(5) : undefined;
    const { requests } = await this.limiter.limitsFor(user);
    const windows: ThrottleWindow[] = [];
    // stored window name -> the configured name, shown in headers, messages and metrics
    const shownName = new Map<string, string>();
    for (const w of requests) {
      if (this.reflector.getAllAndOverride<boolean>(THROTTLER_SKIP + w.name, [handler, classRef])) continue;
      const limit = this.reflector.getAllAndOverride<number>(THROTTLER_LIMIT + w.name, [handler, classRef]);
      const ttl = this.reflector.getAllAndOverride<number>(THROTTLER_TTL + w.name, [handler, classRef]);
      const window = {
        name: w.name,
        limit: typeof limit === 'number' ? limit : w.limit,
        ttl: typeof ttl === 'number' ? ttl : w.ttl,
      };
      // An overridden window is counted for its route alone: on the user's shared counter, another
      // length would restart or shorten the window every other route counts in.
      if (window.limit !== w.limit || window.ttl !== w.ttl)
        window.name = `${w.name}@${classRef.name}.${handler.name}`;
      shownName.set(window.name, w.name);
      windows.push(window);
    }
    if (windows.length === 0) return true;
    const result = await this.limiter.hitRequest(tracker, windows);
    (req as Record<symbol, unknown>)[COUNTED] = true;
    const shown = result.blockedBy ?? tightestWindow(result.windows);
    if (shown && !result.degraded) {
      this.setResponseHeader(res, 'x-ratelimit-limit', shown.limit);
      this.setResponseHeader(res, 'x-ratelimit-remaining', shown.remaining);
      this.setResponseHeader(res, 'x-ratelimit-reset', Math.ceil(shown.resetMs / 1000));
    }
    if (!result.allowed) {
      const w = result.blockedBy!;
      const retryAfter = Math.max(1, Math.ceil(w.resetMs / 1000));
      this.setResponseHeader(res, 'retry-after', retryAfter);
      const name = shownName.get(w.name) ?? w.name;
      this.metrics.rateLimited('requests', name);
      throw new RateLimitExceededException('requests', name, w.limit, retryAfter);
    }
    return true;
  }

  /**
   * Sets the header on the Node response (`reply.raw` with Fastify), so that it survives a handler
   * that hijacks the reply to stream (SSE); Node merges it into the headers Fastify writes otherwise.
   */
  protected override setResponseHeader(res: Record<string, any>, name: string, value: string | number): void {
    const raw = rawResponse(res);
    if (!raw.headersSent) raw.setHeader(name, String(value));
  }

  /** `user:<id>` from the identity resolver (`identity.resolve`), else `ip:<client IP>` (IPv6 by /64). */
  protected override async getTracker(req: Record<string, any>): Promise<string> {
    return (await this.identity.resolve(req)).tracker;
  }
}
