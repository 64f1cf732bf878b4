import {
  Inject,
  Injectable,
  Optional,
  type CallHandler,
  type ExecutionContext,
  type NestInterceptor,
} from '@nestjs/common';
import { Observable, from, mergeMap } from 'rxjs';
import { RequestIdentityService } from '../identity/request-identity.service.js';
import { RequestContextStore } from './request-context.js';
import {
  OPENAI_REQUEST_CONTEXT_ROUTES,
  restrictsRoutes,
  type RequestContextRoutes,
} from './request-context-routes.js';
import { REQUEST_ID_HEADER } from '../openai.constants.js';
import { rawResponse } from '../utils/http.js';
import { memoized } from '../utils/bounded-memo.js';

const sameString = (s: string) => s;

/**
 * Re-enters the request context around the handler when it was lost: some adapters (Fastify parses the
 * body after middleware) lose AsyncLocalStorage between the middleware and the handler; when the handler
 * chain still runs in it (Express), nothing is re-entered. Also fills
 * `route` from the matched route. Registered globally by `OpenAIModule`.
 *
 * When the module's `requestContext` narrows the routes, the middleware's choice stands: a request it
 * did not open a context for (an excluded route) passes through untouched, so Nest's own route matching
 * is the single judge of which routes are in.
 */
@Injectable()
export class RequestContextInterceptor implements NestInterceptor {
  private readonly followMiddleware: boolean;
  /** Route labels, interned. */
  private readonly routes = new Map<string, string>();

  constructor(
    @Optional() @Inject(OPENAI_REQUEST_CONTEXT_ROUTES) routes?: RequestContextRoutes,
    @Optional() @Inject(RequestIdentityService) private readonly identity?: RequestIdentityService,
  ) {
    this.followMiddleware = restrictsRoutes(routes);
  }

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http') return next.handle();
    const http = context.switchToHttp();
    const req = http.getRequest<{
      method?: string;
      route?: { path?: string };
      routeOptions?: { url?: string };
      headers: Record<string, unknown>;
    }>();
    const opened = RequestContextStore.fromRequest(req);
    if (!opened && this.followMiddleware) return next.handle();
    const ctx =
      opened ??
      RequestContextStore.attach(req, req.headers[REQUEST_ID_HEADER], rawResponse(http.getResponse()));
    ctx.handler = context.getHandler();
    ctx.controller = context.getClass();
    if (!ctx.route) {
      const path = req.route?.path ?? req.routeOptions?.url;
      // one string per route (method and pattern) kept, not one per request
      if (path) ctx.route = memoized(this.routes, `${req.method} ${path}`, 10_000, sameString);
    }
    // The user, from the one identity resolver (the guard may have resolved it already: cached).
    const identity = this.identity?.resolve(req);
    // Already inside this request's context (Express: the middleware's run() carries through Nest's
    // handler chain): nothing to re-enter.
    if (!(identity instanceof Promise) && RequestContextStore.get() === ctx) return next.handle();
    const run = () =>
      new Observable<unknown>((subscriber) =>
        RequestContextStore.run(ctx, () => next.handle().subscribe(subscriber)),
      );
    return identity instanceof Promise ? from(identity).pipe(mergeMap(run)) : run();
  }
}
