import { Injectable, type NestMiddleware } from '@nestjs/common';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { RequestContextStore } from './request-context.js';
import { REQUEST_ID_HEADER } from '../openai.constants.js';

/**
 * First step of every request: accepts or replaces the inbound `x-request-id`, echoes it on the
 * response, and opens the request context. Applied by `OpenAIModule` to every route, or to those its
 * `requestContext` option names (Express and Fastify).
 */
@Injectable()
export class RequestContextMiddleware implements NestMiddleware {
  use(req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void): void {
    const ctx = RequestContextStore.attach(req, req.headers[REQUEST_ID_HEADER], res);
    if (!res.headersSent) res.setHeader(REQUEST_ID_HEADER, ctx.requestId);
    RequestContextStore.run(ctx, next);
  }
}
