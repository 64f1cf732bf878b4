import {
  Catch,
  HttpException,
  HttpStatus,
  Inject,
  Logger,
  Optional,
  type ArgumentsHost,
  type ExceptionFilter,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import OpenAI, { APIError, OpenAIError } from 'openai';
import { logUpstreamFailure, mapUpstreamError } from './map-upstream-error.js';
import { fingerprintKey } from '../logging/redact.js';
import { OPENAI_CLIENT } from '../openai.constants.js';
import {
  RequestContextStore,
  acceptRequestId,
  type RequestContext,
} from '../request-context/request-context.js';
import type { OpenAIErrorBody } from './openai-http.exceptions.js';
import { redactSecrets } from '../logging/redact.js';
import { REQUEST_ID_HEADER } from '../openai.constants.js';

/**
 * The body-parser (http-errors) or Fastify error with a client status under an HttpException that
 * Nest's adapter made from it, or `undefined`.
 */
function frameworkClientError(exception: unknown): Error | undefined {
  const cause = exception instanceof HttpException ? exception.cause : undefined;
  if (!(cause instanceof Error) || cause instanceof HttpException) return undefined;
  const c = cause as Error & { statusCode?: unknown; status?: unknown; expose?: unknown };
  const status = c.statusCode ?? c.status;
  if (typeof status !== 'number' || status < 400 || status >= 500) return undefined;
  const fromFramework =
    c.name === 'FastifyError' ||
    typeof c.expose === 'boolean' ||
    c instanceof SyntaxError ||
    c instanceof URIError;
  return fromFramework ? cause : undefined;
}

const snake = (s: string) =>
  s
    .replace(/Exception$/, '')
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[\s-]+/g, '_')
    .toLowerCase();

/**
 * Turns every error into the library's JSON error body `{ statusCode, error, message, request_id }`:
 * Nest's and other libraries' HttpExceptions are reshaped (their extra fields kept), anything else
 * becomes a 500 with a generic message, logged with the request ID (redacted), never sent to the client.
 * Works on Express and Fastify.
 *
 * @example app.useGlobalFilters(new OpenAIExceptionFilter(app.get(HttpAdapterHost)));
 * // or: providers: [{ provide: APP_FILTER, useClass: OpenAIExceptionFilter }]
 */
@Catch()
export class OpenAIExceptionFilter implements ExceptionFilter {
  private readonly logger = new Logger('OpenAIExceptionFilter');

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    /** The module's client, for the key fingerprint logged with an upstream 401/403 (absent when built with `new`). */
    @Optional() @Inject(OPENAI_CLIENT) private readonly client?: OpenAI,
  ) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    if (host.getType() !== 'http') throw exception;
    const http = host.switchToHttp();
    const req = http.getRequest();
    const res = http.getResponse();
    const ctx = RequestContextStore.fromRequest(req) ?? RequestContextStore.get();
    const requestId = ctx?.requestId ?? acceptRequestId(req?.headers?.[REQUEST_ID_HEADER]);
    // An SDK error thrown by a direct call (`@InjectOpenAI()`) gets the service's mapping and log line.
    if (exception instanceof OpenAIError) exception = this.fromSdkError(exception, ctx);
    const body = this.toBody(exception, requestId);
    const adapter = this.adapterHost.httpAdapter;
    if (typeof adapter.isHeadersSent === 'function' ? adapter.isHeadersSent(res) : res.headersSent) return;
    adapter.setHeader(res, REQUEST_ID_HEADER, requestId);
    const headers = (exception as { headers?: Record<string, string> })?.headers;
    if (exception instanceof HttpException && headers && typeof headers === 'object') {
      for (const [k, v] of Object.entries(headers)) adapter.setHeader(res, k, String(v));
    }
    adapter.reply(res, body, body.statusCode);
  }

  private fromSdkError(err: OpenAIError, ctx: RequestContext | undefined): HttpException {
    const mapped = mapUpstreamError(err);
    let key: string | undefined;
    if (err instanceof APIError && (err.status === 401 || err.status === 403)) {
      try {
        key = this.client ? fingerprintKey(this.client.apiKey) : undefined;
      } catch {
        key = undefined;
      }
    }
    logUpstreamFailure(
      this.logger,
      mapped,
      { msg: 'openai call failed', request_id: ctx?.requestId, user: ctx?.user, route: ctx?.route },
      key,
    );
    return mapped;
  }

  private toBody(exception: unknown, requestId: string): OpenAIErrorBody {
    // Nest 12 wraps body-parser and Fastify errors in a plain HttpException that keeps the parser's
    // message (which may quote the body): answer those from the framework error itself.
    exception = frameworkClientError(exception) ?? exception;
    if (exception instanceof HttpException) {
      const status = exception.getStatus();
      const response = exception.getResponse();
      if (typeof response === 'object' && response !== null) {
        const r = response as Record<string, unknown>;
        const message = Array.isArray(r.message)
          ? r.message.join('; ')
          : typeof r.message === 'string'
            ? r.message
            : exception.message;
        const error =
          typeof r.error === 'string' && /^[a-z0-9_]+$/.test(r.error)
            ? r.error
            : snake(typeof r.error === 'string' ? r.error : exception.name);
        return { ...r, statusCode: status, error, message: redactSecrets(message), request_id: requestId };
      }
      return {
        statusCode: status,
        error: snake(exception.name),
        message: redactSecrets(String(response)),
        request_id: requestId,
      };
    }
    const status =
      (exception as { statusCode?: unknown; status?: unknown })?.statusCode ??
      (exception as { status?: unknown })?.status;
    // Framework errors that carry a client status (body parser: invalid JSON, too large, bad encoding).
    if (typeof status === 'number' && status >= 400 && status < 500) {
      const { code, type } = exception as { code?: string; type?: string };
      const notJson =
        type === 'entity.parse.failed' || (code && /JSON/i.test(code + String((exception as Error).message)));
      if (status === 413) {
        return {
          statusCode: 413,
          error: 'payload_too_large',
          message: 'Request body is too large',
          request_id: requestId,
        };
      }
      // A body that is not JSON is a 400 whatever the parser said (415 for a content type or charset it
      // does not read), so clients see one status for one mistake on every platform.
      const message = notJson
        ? 'Request body is not valid JSON'
        : status === 415
          ? 'Send the body as application/json (UTF-8)'
          : 'Invalid request body';
      return {
        statusCode: status === 415 ? 400 : status,
        error: 'invalid_body',
        message,
        request_id: requestId,
      };
    }
    this.logger.error({
      msg: 'unhandled error',
      request_id: requestId,
      error: redactSecrets(
        exception instanceof Error ? `${exception.name}: ${exception.message}` : String(exception),
      ).slice(0, 500),
    });
    return {
      statusCode: HttpStatus.INTERNAL_SERVER_ERROR,
      error: 'internal_error',
      message: 'Internal server error',
      request_id: requestId,
    };
  }
}
