import { Inject, Injectable, Optional, type ExecutionContext } from '@nestjs/common';
import { ModulesContainer, Reflector } from '@nestjs/core';
import { ThrottlerGuard } from '@nestjs/throttler';
import { RequestIdentityService } from '../identity/request-identity.service.js';
import { RefusalRecorder } from '../call/refusal.recorder.js';
import { OpenAIConfigError, type ConfigProblem } from '../errors/openai-config.error.js';
import { OpenAIProductionError } from '../errors/openai-production.error.js';
import type { OpenAIErrorBody } from '../errors/openai-http.exceptions.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import type {
  RequestLimitDetail,
  ResolvedOpenAIOptions,
  ThrottleWindow,
} from '../options/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';
import { rawResponse } from '../utils/http.js';
import { OpenAIThrottlerStorage } from './openai-throttler.storage.js';
import { RateLimitExceededException } from './rate-limit.exceptions.js';
import { RateLimitService, tightestWindow } from './rate-limit.service.js';

// Metadata keys written by @nestjs/throttler's @Throttle() and @SkipThrottle() (key + throttler name).
const THROTTLER_LIMIT = 'THROTTLER:LIMIT';
const THROTTLER_TTL = 'THROTTLER:TTL';
const THROTTLER_SKIP = 'THROTTLER:SKIP';
const THROTTLER_BLOCK_DURATION = 'THROTTLER:BLOCK_DURATION';
const THROTTLER_TRACKER = 'THROTTLER:TRACKER';
const THROTTLER_KEY_GENERATOR = 'THROTTLER:KEY_GENERATOR';
const THROTTLER_KEYS = [
  THROTTLER_LIMIT,
  THROTTLER_TTL,
  THROTTLER_SKIP,
  THROTTLER_BLOCK_DURATION,
  THROTTLER_TRACKER,
  THROTTLER_KEY_GENERATOR,
];
/** `ThrottlerModule`'s options token (`getOptionsToken()` of @nestjs/throttler). */
const THROTTLER_MODULE_OPTIONS = 'THROTTLER:MODULE_OPTIONS';
// Metadata keys of @UseGuards() and of route decorators (@nestjs/common's GUARDS_METADATA, PATH_METADATA).
const GUARDS_METADATA = '__guards__';
const PATH_METADATA = 'path';
const COUNTED = Symbol.for('OPENAI:THROTTLE_COUNTED');
/** The name `@SkipThrottle()` and a one-throttler `ThrottlerModule` use. */
const DEFAULT = 'default';
/** Apps whose routes were checked already (one check per app, however many guard instances). */
const checkedApps = new WeakSet<object>();
/** ThrottlerGuard's own `shouldSkip` (always false): not called unless a subclass replaces it. */
const BASE_SHOULD_SKIP = (ThrottlerGuard.prototype as unknown as { shouldSkip: unknown }).shouldSkip;

type Resolvable = number | ((context: ExecutionContext) => number | Promise<number>);
interface Override {
  limit?: Resolvable;
  ttl?: Resolvable;
  blockDuration?: Resolvable;
}
/** A window to count: what the store gets, and the name shown in headers, messages and metrics. */
interface CountedWindow extends ThrottleWindow {
  shown: string;
}

/**
 * Per-user request limits, on `@nestjs/throttler`'s guard. Differences from `ThrottlerGuard`:
 * - the tracker is the user from the identity resolver (`identity.resolve`; default `req.user.id`, `sub`,
 *   `userId`), the client IP only for anonymous requests;
 * - windows nobody overrode are counted per user across routes (`ThrottlerGuard` counts per route);
 * - all windows are checked and counted in one atomic store operation (one Redis round trip), and a
 *   refused request counts against none;
 * - tiers (`limits.tiers`) give each user its own windows;
 * - a request is counted once even when the guard is both global (`APP_GUARD`) and on the route;
 * - sets `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (s) for the tightest window and,
 *   on 429, `retry-after` (s), unless `limits.setHeaders` is `false`.
 *
 * As in `@nestjs/throttler`: `@Throttle({ minute: { limit, ttl, blockDuration } })` overrides a window on
 * a route or controller (values may be functions of the ExecutionContext; the overridden window counts
 * per route, or per user with `limits.overrideScope: 'user'`), `@SkipThrottle({ minute: true })` skips a
 * window, `limits.skipIf`, `limits.ignoreUserAgents`, `limits.errorMessage`. When no window is named
 * `default`, `default` stands for every window: `@SkipThrottle()` skips the route, `@Throttle({ default:
 * { limit, ttl } })` replaces all windows of the route by that one. A decorator naming an unknown window,
 * or a per-route `getTracker`/`generateKey`, fails at boot.
 *
 * @example @UseGuards(OpenAIThrottlerGuard) @Post('chat') chat() {}
 */
@Injectable()
export class OpenAIThrottlerGuard extends ThrottlerGuard {
  /** The counted windows per route (handler, class) and set of request limits, when fixed. */
  private readonly routeWindows = new WeakMap<object, WeakMap<object, WeakMap<object, CountedWindow[]>>>();
  /** Read at boot to check the routes' `@Throttle`/`@SkipThrottle` against the configured windows. */
  @Optional() @Inject(ModulesContainer) private readonly modulesContainer?: ModulesContainer;

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
    const modules = this.modulesContainer;
    if (!modules || checkedApps.has(modules)) return;
    checkedApps.add(modules);
    const problems = this.checkRoutes(modules);
    if (problems.length) throw new OpenAIConfigError(this.openaiOptions.environment, problems);
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
    // `shouldSkip` and `getTracker` are ThrottlerGuard's extension points: a subclass's own are awaited;
    // ours answer without a promise when they can (no await per step on the common path).
    if (this.shouldSkip !== BASE_SHOULD_SKIP && (await this.shouldSkip(context))) return true;
    const { skipIf, ignoreUserAgents, tiers } = this.openaiOptions.limits;
    if (skipIf && (await skipIf(context))) return true;
    const userAgent = req.headers?.['user-agent'];
    if (ignoreUserAgents?.length && typeof userAgent === 'string')
      for (const pattern of ignoreUserAgents) if (pattern.test(userAgent)) return true;

    const tracked =
      this.getTracker === OpenAIThrottlerGuard.prototype.getTracker
        ? this.identity.resolve(req)
        : this.getTracker(req).then((t) => ({ tracker: t }));
    const tracker = (tracked instanceof Promise ? await tracked : tracked).tracker;
    const user = tracker.startsWith('user:') ? tracker.slice(5) : undefined;
    const requests = tiers
      ? (await this.limiter.limitsFor(user)).requests
      : this.openaiOptions.limits.requests;
    const routed = this.windowsOf(context, requests);
    const windows = routed instanceof Promise ? await routed : routed;
    if (windows.length === 0) return true;
    const result = await this.limiter.hitRequest(tracker, windows);
    (req as Record<symbol, unknown>)[COUNTED] = true;
    const setHeaders = this.openaiOptions.limits.setHeaders ?? true;
    const shown = result.blockedBy ?? tightestWindow(result.windows);
    if (setHeaders && shown && !result.degraded) {
      this.setResponseHeader(res, 'x-ratelimit-limit', shown.limit);
      this.setResponseHeader(res, 'x-ratelimit-remaining', shown.remaining);
      this.setResponseHeader(res, 'x-ratelimit-reset', Math.ceil(shown.resetMs / 1000));
    }
    if (!result.allowed) {
      const w = result.blockedBy!;
      const window = windows.find((c) => c.name === w.name);
      const name = window?.shown ?? w.name;
      const retryAfter = Math.max(1, Math.ceil(w.resetMs / 1000));
      if (setHeaders) this.setResponseHeader(res, 'retry-after', retryAfter);
      this.metrics.rateLimited('requests', name);
      const refused = new RateLimitExceededException('requests', name, w.limit, retryAfter);
      // without headers, the exception filter must not add retry-after either (the body keeps retry_after)
      if (!setHeaders) delete refused.headers['retry-after'];
      const message = await this.customMessage(context, {
        name,
        limit: w.limit,
        ttl: window?.ttl ?? 0,
        key: w.name,
        tracker,
        totalHits: w.used + 1,
        timeToExpire: retryAfter,
        isBlocked: true,
        timeToBlockExpire: retryAfter,
      });
      if (message !== undefined) {
        (refused.getResponse() as OpenAIErrorBody).message = message;
        refused.message = message;
      }
      throw refused;
    }
    return true;
  }

  /**
   * The windows this request counts in: the user's windows minus the skipped ones, with `@Throttle`
   * overrides applied. `default` addresses the window named `default`, else every window.
   */
  private windowsOf(
    context: ExecutionContext,
    requests: readonly ThrottleWindow[],
  ): CountedWindow[] | Promise<CountedWindow[]> {
    const handler = context.getHandler();
    const classRef = context.getClass();
    // Decorator metadata is fixed once the app is built: the windows of a route (for one set of limits)
    // are computed once, unless an override is a function of the request.
    let byClass = this.routeWindows.get(handler);
    if (!byClass) this.routeWindows.set(handler, (byClass = new WeakMap()));
    let byLimits = byClass.get(classRef);
    if (!byLimits) byClass.set(classRef, (byLimits = new WeakMap()));
    const known = byLimits.get(requests);
    if (known) return known;
    const cache = byLimits;
    return this.computeWindows(context, handler, classRef, requests).then((computed) => {
      if (computed.static) cache.set(requests, computed.windows);
      return computed.windows;
    });
  }

  private async computeWindows(
    context: ExecutionContext,
    handler: object,
    classRef: { name: string },
    requests: readonly ThrottleWindow[],
  ): Promise<{ windows: CountedWindow[]; static: boolean }> {
    const meta = (key: string): unknown =>
      this.reflector.getAllAndOverride<unknown>(key, [handler as () => void, classRef as new () => unknown]);
    const handlerName = (handler as { name?: string }).name;
    const hasDefault = requests.some((w) => w.name === DEFAULT);
    const defaultSkip = hasDefault ? undefined : (meta(THROTTLER_SKIP + DEFAULT) as boolean | undefined);
    const defaultOverride = hasDefault ? undefined : this.overrideOf(meta, DEFAULT);
    const routeScope = (this.openaiOptions.limits.overrideScope ?? 'route') === 'route';
    const route = `${classRef.name}.${handlerName}`;
    const out: CountedWindow[] = [];
    let isStatic = true;
    for (const w of requests) {
      // a window's own setting wins over `default` (`@SkipThrottle()` on the class, `{ minute: false }` on a handler)
      if ((meta(THROTTLER_SKIP + w.name) as boolean | undefined) ?? defaultSkip) continue;
      const own = this.overrideOf(meta, w.name);
      const override = own ?? defaultOverride;
      if (!override) {
        out.push({ ...w, shown: w.name });
        continue;
      }
      // `@Throttle({ default: { limit, ttl } })` gives one window in place of all it addresses
      const replacesAll = !own && defaultOverride?.limit !== undefined && defaultOverride.ttl !== undefined;
      const shown = replacesAll ? DEFAULT : w.name;
      if (replacesAll && out.some((c) => c.shown === DEFAULT)) continue;
      for (const v of [override.limit, override.ttl, override.blockDuration])
        if (typeof v === 'function') isStatic = false;
      const limit = await this.resolve(context, override.limit ?? w.limit, 'limit', shown, route);
      const ttl = await this.resolve(context, override.ttl ?? w.ttl, 'ttl', shown, route);
      const block = override.blockDuration ?? w.blockDuration;
      const blockDuration =
        block === undefined ? undefined : await this.resolve(context, block, 'blockDuration', shown, route);
      // Per route (as @nestjs/throttler), or on the user's counter of that window, one per length: on a
      // shared counter another length would restart or shorten the window other routes count in.
      const name = routeScope
        ? `${shown}@${route}`
        : shown !== DEFAULT && ttl === w.ttl
          ? shown
          : `${shown}@${ttl}ms`;
      out.push({ name, limit, ttl, ...(blockDuration !== undefined && { blockDuration }), shown });
    }
    return { windows: out, static: isStatic };
  }

  private overrideOf(meta: (key: string) => unknown, name: string): Override | undefined {
    const o: Override = {
      limit: meta(THROTTLER_LIMIT + name) as Resolvable | undefined,
      ttl: meta(THROTTLER_TTL + name) as Resolvable | undefined,
      blockDuration: meta(THROTTLER_BLOCK_DURATION + name) as Resolvable | undefined,
    };
    return o.limit === undefined && o.ttl === undefined && o.blockDuration === undefined ? undefined : o;
  }

  /** A `Resolvable<number>` of `@Throttle`, resolved with the context as `ThrottlerGuard` does. */
  private async resolve(
    context: ExecutionContext,
    value: Resolvable,
    option: string,
    window: string,
    route: string,
  ): Promise<number> {
    const v: unknown = typeof value === 'function' ? await value(context) : value;
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0)
      throw new OpenAIProductionError(
        `@Throttle on ${route}: "${option}" of the "${window}" window must be a positive integer, got ${JSON.stringify(v)}; fix the value or the function that returns it`,
      );
    return n;
  }

  private async customMessage(
    context: ExecutionContext,
    detail: RequestLimitDetail,
  ): Promise<string | undefined> {
    const { errorMessage } = this.openaiOptions.limits;
    if (errorMessage === undefined) return undefined;
    return typeof errorMessage === 'function' ? await errorMessage(context, detail) : errorMessage;
  }

  /**
   * Checks, once per app, what `@nestjs/throttler` would apply but this guard could not: decorators on
   * its routes naming an unknown window, per-route `getTracker`/`generateKey`, and `ThrottlerModule`
   * options that no `ThrottlerGuard` reads.
   */
  private checkRoutes(modules: ModulesContainer): ConfigProblem[] {
    const problems: ConfigProblem[] = [];
    const names = new Set(this.openaiOptions.limits.requests.map((w) => w.name));
    const known = [...names, ...(names.has(DEFAULT) ? [] : [DEFAULT])];
    const tiers = this.openaiOptions.limits.tiers !== undefined;
    const isOurs = (g: unknown) =>
      g === OpenAIThrottlerGuard ||
      g instanceof OpenAIThrottlerGuard ||
      (typeof g === 'function' && g.prototype instanceof OpenAIThrottlerGuard);
    const isPlain = (g: unknown) =>
      !isOurs(g) &&
      (g === ThrottlerGuard ||
        g instanceof ThrottlerGuard ||
        (typeof g === 'function' && g.prototype instanceof ThrottlerGuard));
    const guards = (target: object): unknown[] =>
      (Reflect.getMetadata(GUARDS_METADATA, target) as unknown[] | undefined) ?? [];

    let global = false;
    let plainUsed = false;
    let throttlerOptions = false;
    const routes: Array<{ cls: Function; fn: Function; method: string }> = [];
    for (const module of modules.values()) {
      for (const [token, wrapper] of module.providers) {
        if (token === THROTTLER_MODULE_OPTIONS) throttlerOptions = true;
        if (typeof token === 'string' && token.startsWith('APP_GUARD')) {
          if (isOurs(wrapper.metatype)) global = true;
          else if (isPlain(wrapper.metatype)) plainUsed = true;
        }
      }
      for (const wrapper of module.controllers.values()) {
        const cls = wrapper.metatype as Function | undefined | null;
        if (typeof cls !== 'function') continue;
        for (
          let proto = cls.prototype;
          proto && proto !== Object.prototype;
          proto = Object.getPrototypeOf(proto)
        )
          for (const method of Object.getOwnPropertyNames(proto)) {
            const fn = Object.getOwnPropertyDescriptor(proto, method)?.value as unknown;
            if (method === 'constructor' || typeof fn !== 'function') continue;
            if (Reflect.getMetadata(PATH_METADATA, fn) === undefined) continue;
            if (routes.some((r) => r.cls === cls && r.method === method)) continue;
            routes.push({ cls, fn, method });
          }
      }
    }
    const reported = new Set<string>();
    for (const { cls, fn, method } of routes) {
      const routeGuards = [...guards(cls), ...guards(fn)];
      if (routeGuards.some(isPlain)) plainUsed = true;
      if (!global && !routeGuards.some(isOurs)) continue;
      for (const [target, where] of [
        [cls, cls.name],
        [fn, `${cls.name}.${method}`],
      ] as const) {
        for (const key of Reflect.getMetadataKeys(target) as unknown[]) {
          if (typeof key !== 'string') continue;
          const prefix = THROTTLER_KEYS.find((k) => key.startsWith(k));
          if (!prefix) continue;
          const name = key.slice(prefix.length);
          const decorator = prefix === THROTTLER_SKIP ? '@SkipThrottle' : '@Throttle';
          const id = `${where}|${decorator}|${name}|${prefix}`;
          if (reported.has(id)) continue;
          if (
            (prefix === THROTTLER_TRACKER || prefix === THROTTLER_KEY_GENERATOR) &&
            Reflect.getMetadata(key, target) !== undefined
          ) {
            reported.add(id);
            problems.push({
              path: `${decorator}({ ${name}: { ${prefix === THROTTLER_TRACKER ? 'getTracker' : 'generateKey'} } }) on ${where}`,
              message: 'OpenAIThrottlerGuard does not support a per-route tracker or key',
              fix: 'remove it: limits count per user from identity.resolve (set identity.resolve to change who a request counts against)',
            });
          }
          if (known.includes(name)) continue;
          const unknownId = `${where}|${decorator}|${name}`;
          if (reported.has(unknownId)) continue;
          reported.add(unknownId);
          if (tiers) {
            // a tier may have this window: not an error, but never silent
            this.logger.warn(
              `${decorator}({ ${name} }) on ${where} names a window limits.requests does not have; it applies only to users whose tier has a "${name}" window`,
            );
            continue;
          }
          problems.push({
            path: `${decorator}({ ${name} }) on ${where}`,
            message: `names the window "${name}", which limits.requests does not have (windows: ${known.join(', ')})`,
            fix: `name one of ${known.join(', ')} (default: every window), or add a "${name}" window to limits.requests`,
          });
        }
      }
    }
    if (throttlerOptions && !plainUsed)
      problems.push({
        path: 'ThrottlerModule.forRoot()/forRootAsync()',
        message:
          "its options are read only by @nestjs/throttler's ThrottlerGuard, which no route uses; OpenAIThrottlerGuard ignores them",
        fix: 'move the throttlers to OpenAIModule limits.requests ([{ name, limit, ttl }]) and the common options to limits (skipIf, ignoreUserAgents, errorMessage, setHeaders), then remove ThrottlerModule',
      });
    return problems;
  }

  /**
   * Sets the header through the framework (`res.header()`, as `ThrottlerGuard` does: Fastify's reply
   * and hooks see it) and on the Node response (`reply.raw` with Fastify), so that it survives a handler
   * that hijacks the reply to stream (SSE); Node merges it into the headers Fastify writes otherwise.
   */
  protected override setResponseHeader(res: Record<string, any>, name: string, value: string | number): void {
    // Express: the response is Node's own (express' `header()` only adds content-type handling).
    if (res.raw === undefined && typeof res.setHeader === 'function') {
      if (!res.headersSent) res.setHeader(name, String(value));
      return;
    }
    const viaFramework = typeof res.header === 'function';
    if (viaFramework) res.header(name, String(value));
    const raw = rawResponse(res);
    if ((raw !== res || !viaFramework) && typeof raw.setHeader === 'function' && !raw.headersSent)
      raw.setHeader(name, String(value));
  }

  /** `user:<id>` from the identity resolver (`identity.resolve`), else `ip:<client IP>` (IPv6 by /64). */
  protected override async getTracker(req: Record<string, any>): Promise<string> {
    return (await this.identity.resolve(req)).tracker;
  }
}
