import type { MiddlewareConsumer } from '@nestjs/common';

/** Nest's `MiddlewareConfigProxy` (not exported by name from `@nestjs/common`). */
type MiddlewareConfigProxy = ReturnType<MiddlewareConsumer['apply']>;

/** Injection token of the `requestContext` routing given to `OpenAIModule.forRoot()` / `forRootAsync()`. */
export const OPENAI_REQUEST_CONTEXT_ROUTES = Symbol.for('OPENAI:REQUEST_CONTEXT_ROUTES');

/**
 * Where the request context (request ID, `x-request-id` echo, user, route) is opened: the arguments of
 * Nest's `MiddlewareConsumer.apply(...).exclude(...).forRoutes(...)`, as `nestjs-pino` takes them.
 * The module's global interceptor follows the middleware: on a route the middleware skips, it does nothing.
 *
 * @example
 * OpenAIModule.forRoot({
 *   apiKey,
 *   requestContext: { exclude: [{ path: 'health', method: RequestMethod.GET }, 'metrics'] },
 * })
 */
export interface RequestContextRoutes {
  /** Routes, paths or controllers that get the request context. @default every route (`{ path: '*', method: RequestMethod.ALL }`) */
  forRoutes?: Parameters<MiddlewareConfigProxy['forRoutes']>;
  /** Routes or paths left without it, although `forRoutes` matches them. @default none */
  exclude?: Parameters<MiddlewareConfigProxy['exclude']>;
}

/** True when `routes` narrows the request context to fewer than all routes. */
export function restrictsRoutes(routes: RequestContextRoutes | undefined): boolean {
  return routes?.forRoutes !== undefined || (routes?.exclude?.length ?? 0) > 0;
}
