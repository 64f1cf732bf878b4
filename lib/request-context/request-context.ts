import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';

/**
 * What the library knows about the HTTP request being served. Kept in AsyncLocalStorage (never in a
 * REQUEST-scoped provider) and on the request object, so guards, pipes, the service and the filter
 * all see the same one.
 */
export interface RequestContext {
  /** The inbound `x-request-id` when sane, else a fresh UUID. Echoed on the response. */
  requestId: string;
  /** The end user the limits, budgets and usage apply to, once a guard or the app has set it. */
  user?: string;
  /**
   * Whom this request's limits count against: `user:<id>`, or `ip:<client IP>` when anonymous. Set
   * with `user` by the identity resolver (`RequestIdentityService`).
   */
  tracker?: string;
  /** Route pattern (e.g. `POST /chat`), for usage and metrics labels. */
  route?: string;
  /** `performance.now()` when the request arrived (ms). */
  startedAt: number;
  /** Upstream `x-request-id` of the last OpenAI call made for this request. */
  openaiRequestId?: string;
  /** The route handler and its controller, set before pipes run, so pipes and the service can read route metadata. */
  handler?: Function;
  controller?: Function;
  /** The raw Node response, so limits enforced deep in the pipeline can set headers (`retry-after`). */
  response?: ServerResponse;
}

const storage = new AsyncLocalStorage<RequestContext>();
/** Property under which the context is also stored on the raw request (Express or Fastify). */
export const REQUEST_CONTEXT_KEY = Symbol.for('OPENAI:REQUEST_CONTEXT');

const SANE_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** The inbound ID when it is at most 128 characters of letters, digits, `.`, `_`, `-`; else a fresh UUID. */
export function acceptRequestId(inbound: unknown): string {
  return typeof inbound === 'string' && SANE_ID.test(inbound) ? inbound : randomUUID();
}

/** Access to the current request context. Static so plain functions and non-Nest code can use it. */
export const RequestContextStore = {
  /** The context of the request being served, or `undefined` outside a request. */
  get(): RequestContext | undefined {
    return storage.getStore();
  },
  /** Runs `fn` inside `context`. */
  run<T>(context: RequestContext, fn: () => T): T {
    return storage.run(context, fn);
  },
  /** The context stored on a raw request object by the middleware, if any. */
  fromRequest(req: unknown): RequestContext | undefined {
    if (req && typeof req === 'object') {
      const direct = (req as Record<symbol, RequestContext | undefined>)[REQUEST_CONTEXT_KEY];
      if (direct) return direct;
      // Fastify wraps the raw Node request.
      const raw = (req as { raw?: unknown }).raw;
      if (raw && typeof raw === 'object')
        return (raw as Record<symbol, RequestContext | undefined>)[REQUEST_CONTEXT_KEY];
    }
    return undefined;
  },
  /** Sets a header on the current request's response, if there is one and it has not been sent. */
  setHeader(name: string, value: string | number): void {
    const res = storage.getStore()?.response;
    if (res && !res.headersSent) res.setHeader(name, String(value));
  },
  /** Creates the context for a raw request and stores it there (idempotent). */
  attach(req: object, inboundId: unknown, response?: ServerResponse): RequestContext {
    const existing = RequestContextStore.fromRequest(req);
    if (existing) return existing;
    const ctx: RequestContext = {
      requestId: acceptRequestId(inboundId),
      startedAt: performance.now(),
      response,
    };
    (req as Record<symbol, RequestContext>)[REQUEST_CONTEXT_KEY] = ctx;
    return ctx;
  },
};
