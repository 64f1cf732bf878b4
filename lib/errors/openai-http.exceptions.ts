import { HttpException, HttpStatus } from '@nestjs/common';
import { RequestContextStore } from '../request-context/request-context.js';

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

/** 400: the upstream rejected the request as invalid (the message is ours; the upstream code and parameter go to the log). */
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

/**
 * The upstream asked for a wait (`retry-after-ms` / `retry-after`) longer than `retry.maxRetryAfterMs` or
 * than what is left of the call's deadline, and no fallback model could answer. The call fails at once
 * (no sleep) and passes the wait on: 429 `upstream_rate_limited` when the upstream answered 429, else 502
 * `upstream_error`; both with a `retry-after` header (s) and `retry_after` in the body.
 */
export class UpstreamRetryLaterException extends OpenAIHttpException {
  readonly headers: Record<string, string>;
  constructor(
    upstreamStatus: number,
    retryAfterMs: number,
    model: string,
    options?: { cause?: unknown; openaiRequestId?: string },
  ) {
    const retryAfter = Math.max(1, Math.ceil(retryAfterMs / 1000));
    const limited = upstreamStatus === 429;
    super(
      limited ? HttpStatus.TOO_MANY_REQUESTS : HttpStatus.BAD_GATEWAY,
      limited ? 'upstream_rate_limited' : 'upstream_error',
      limited
        ? `The model provider is rate limiting this project (${model}); retry in ${retryAfter} s`
        : `The model provider is unavailable (HTTP ${upstreamStatus}, ${model}); retry in ${retryAfter} s`,
      { ...options, extra: { retry_after: retryAfter } },
    );
    this.headers = { 'retry-after': String(retryAfter) };
  }
}
