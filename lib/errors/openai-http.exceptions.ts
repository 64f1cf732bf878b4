import { HttpException, HttpStatus } from '@nestjs/common';
import { RequestContextStore } from '../context/request-context.js';

/**
 * JSON body of every error the library answers with:
 * `{ statusCode, error, message, request_id }`, plus fields of the specific error.
 */
export interface OpenAIErrorBody {
  statusCode: number;
  /** Machine-readable code, e.g. `upstream_timeout`, `model_not_allowed`, `budget_exceeded`. */
  error: string;
  /** Human-readable, safe to show: never an upstream body, never a key. */
  message: string;
  /** The request's `x-request-id`. */
  request_id?: string;
  [extra: string]: unknown;
}

/**
 * Base of the library's HTTP exceptions. The body carries the current request ID (from the request
 * context) and the upstream request ID when there is one; the SDK error, if any, stays as `cause`.
 */
export class OpenAIHttpException extends HttpException {
  /** Upstream `x-request-id` of the failed call, when the upstream answered. */
  readonly openaiRequestId?: string;

  constructor(
    status: number,
    error: string,
    message: string,
    options?: { cause?: unknown; openaiRequestId?: string; extra?: Record<string, unknown> },
  ) {
    const body: OpenAIErrorBody = {
      statusCode: status,
      error,
      message,
      request_id: RequestContextStore.get()?.requestId,
      ...options?.extra,
    };
    super(body, status, { cause: options?.cause });
    this.openaiRequestId = options?.openaiRequestId;
  }

  /** The error body as sent. */
  get body(): OpenAIErrorBody {
    return this.getResponse() as OpenAIErrorBody;
  }
}

/** 502: the upstream failed after retries and fallbacks, or refused our credentials. */
export class OpenAIUpstreamException extends OpenAIHttpException {
  constructor(message: string, options?: { cause?: unknown; openaiRequestId?: string; error?: string }) {
    super(HttpStatus.BAD_GATEWAY, options?.error ?? 'upstream_error', message, options);
  }
}

/** 504: the upstream did not answer within the attempt timeout or the call's deadline. */
export class OpenAIUpstreamTimeoutException extends OpenAIHttpException {
  constructor(message: string, options?: { cause?: unknown; openaiRequestId?: string }) {
    super(HttpStatus.GATEWAY_TIMEOUT, 'upstream_timeout', message, options);
  }
}

/** 400: the upstream rejected the request as invalid (the message names the code and parameter, not the upstream text). */
export class OpenAIBadRequestException extends OpenAIHttpException {
  constructor(message: string, options?: { cause?: unknown; openaiRequestId?: string; error?: string }) {
    super(HttpStatus.BAD_REQUEST, options?.error ?? 'invalid_request', message, options);
  }
}

/** 400: the model is not allowed here (not in the allow-list, or not pinned where pinning is enforced). */
export class ModelNotAllowedException extends OpenAIHttpException {
  constructor(message: string) {
    super(HttpStatus.BAD_REQUEST, 'model_not_allowed', message);
  }
}
