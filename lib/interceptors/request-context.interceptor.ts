import { Injectable, type CallHandler, type ExecutionContext, type NestInterceptor } from '@nestjs/common';
import { Observable } from 'rxjs';
import { RequestContextStore } from '../context/request-context.js';
import { REQUEST_ID_HEADER } from '../openai.constants.js';
import { rawResponse } from '../utils/http.js';

/**
 * Re-enters the request context around the handler. Needed because some adapters (Fastify parses the
 * body after middleware) lose AsyncLocalStorage between the middleware and the handler. Also fills
 * `route` from the matched route. Registered globally by `OpenAIModule`.
 */
@Injectable()
export class RequestContextInterceptor implements NestInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http') return next.handle();
    const http = context.switchToHttp();
    const req = http.getRequest<{
      method?: string;
      route?: { path?: string };
      routeOptions?: { url?: string };
      headers: Record<string, unknown>;
    }>();
    const ctx =
      RequestContextStore.fromRequest(req) ??
      RequestContextStore.attach(req, req.headers[REQUEST_ID_HEADER], rawResponse(http.getResponse()));
    if (!ctx.user) {
      const u = (req as { user?: { id?: unknown; sub?: unknown } }).user;
      const id = u?.id ?? u?.sub;
      if (typeof id === 'string' || typeof id === 'number') ctx.user = String(id);
    }
    ctx.handler = context.getHandler();
    ctx.controller = context.getClass();
    if (!ctx.route) {
      const path = req.route?.path ?? req.routeOptions?.url;
      if (path) ctx.route = `${req.method} ${path}`;
    }
    return new Observable((subscriber) =>
      RequestContextStore.run(ctx, () => next.handle().subscribe(subscriber)),
    );
  }
}
