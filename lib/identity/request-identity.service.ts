import { Inject, Injectable, Logger } from '@nestjs/common';
import { normalizeIp } from '@nestjs/throttler';
import { RequestContextStore, type RequestContext } from '../request-context/request-context.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';

/**
 * Reads the end user of a request: returns the user's ID, or `undefined` for an anonymous request.
 * Gets the framework's request object (Express `req`, Fastify `request`), after your auth guard ran.
 */
export type IdentityResolver = (
  req: any,
) => string | number | undefined | null | Promise<string | number | undefined | null>;

/** Fields of `req.user` read by the default resolver, in order (Passport/JWT habits: `id`, `sub`, `userId`). */
export const DEFAULT_USER_ID_FIELDS = ['id', 'sub', 'userId'] as const;

/** The default resolver: `req.user.id`, else `req.user.sub`, else `req.user.userId` (a string or number). */
export function defaultIdentityResolver(req: any): string | undefined {
  const u: unknown = req?.user;
  if (!u || typeof u !== 'object') return undefined;
  for (const field of DEFAULT_USER_ID_FIELDS) {
    const v = (u as Record<string, unknown>)[field];
    if ((typeof v === 'string' && v !== '') || (typeof v === 'number' && Number.isFinite(v)))
      return String(v);
  }
  return undefined;
}

/** Who a request is: the user, or for an anonymous one the tracker its limits count against. */
export interface RequestIdentity {
  /** The end user's ID, when the request has one. */
  user?: string;
  /** `user:<id>`, or `ip:<client IP>` (IPv6 grouped by /64) for an anonymous request. */
  tracker: string;
}

/**
 * The one source of the end user's identity. The guard (request limits), the service (token limits,
 * budgets, usage, `safety_identifier`, logs) and the request context all take the user from here:
 * `identity.resolve` when configured, else {@link defaultIdentityResolver}. Resolved once per request and
 * kept in the request context; a user the app put there itself (`ctx.user`) wins.
 */
@Injectable()
export class RequestIdentityService {
  private readonly logger = new Logger('OpenAIIdentity');
  private readonly resolver: IdentityResolver;
  private warnedNoId = false;

  constructor(@Inject(OPENAI_RESOLVED_OPTIONS) options: ResolvedOpenAIOptions) {
    this.resolver = options.identity.resolve ?? options.limits.getTracker ?? defaultIdentityResolver;
  }

  /** The identity of `req` (cached in its request context). Synchronous unless the resolver is async. */
  resolve(req: any): RequestIdentity | Promise<RequestIdentity> {
    const ctx = RequestContextStore.fromRequest(req);
    if (ctx?.tracker) return { user: ctx.user, tracker: ctx.tracker };
    if (ctx?.user !== undefined) return this.remember(req, ctx, ctx.user);
    const found = this.resolver(req);
    if (found instanceof Promise) return found.then((id) => this.remember(req, ctx, id));
    return this.remember(req, ctx, found);
  }

  private remember(req: any, ctx: RequestContext | undefined, id: unknown): RequestIdentity {
    const user =
      (typeof id === 'string' && id !== '') || (typeof id === 'number' && Number.isFinite(id))
        ? String(id)
        : undefined;
    if (user === undefined && req?.user && typeof req.user === 'object' && !this.warnedNoId) {
      this.warnedNoId = true;
      this.logger.warn(
        'req.user is set but yields no user ID (looked for ' +
          `${DEFAULT_USER_ID_FIELDS.join(', ')}): such requests are limited by client IP and get no per-user ` +
          'budget or usage; set identity.resolve to read your user object',
      );
    }
    const ip: string | undefined = req?.ip ?? req?.socket?.remoteAddress ?? req?.raw?.socket?.remoteAddress;
    const tracker = user !== undefined ? `user:${user}` : `ip:${ip ? normalizeIp(ip, 64) : 'unknown'}`;
    if (ctx) {
      ctx.user = user;
      ctx.tracker = tracker;
    }
    return { user, tracker };
  }
}
