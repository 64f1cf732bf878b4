import { HttpException, type Logger } from '@nestjs/common';
import { redactSecrets } from '../logging/redact.js';
import { APIConnectionError, APIConnectionTimeoutError, APIError } from 'openai';
import {
  OpenAIBadRequestException,
  OpenAIHttpException,
  OpenAIUpstreamException,
  OpenAIUpstreamTimeoutException,
} from './openai-http.exceptions.js';

/** Our own timer (attempt timeout or deadline) aborted the attempt. */
export class AttemptTimeoutError extends Error {
  constructor(
    readonly kind: 'attempt' | 'deadline' | 'idle',
    readonly afterMs: number,
  ) {
    super(`upstream ${kind === 'idle' ? 'stream was silent' : 'did not answer'} for ${afterMs} ms`);
    this.name = 'AttemptTimeoutError';
  }
}

/** The caller cancelled the call (its `signal` aborted, e.g. the HTTP client went away). 499 in nginx's terms. */
export class CallAbortedException extends OpenAIHttpException {
  constructor(cause?: unknown) {
    super(499, 'client_closed_request', 'The request was cancelled by the client', { cause });
  }
}

/** Upstream request ID of an SDK error, when the upstream answered. */
export function upstreamRequestId(err: unknown): string | undefined {
  if (err instanceof APIError) return err.requestID ?? err.headers?.get('x-request-id') ?? undefined;
  return undefined;
}

/**
 * Maps what an upstream call threw to the HTTP exception the client gets. The body carries only the
 * library's own codes and messages: never the upstream's text, code or parameter (they may quote the
 * prompt or a secret); those go to the log (see `describeUpstreamError`). Keeps `cause`.
 */
export function mapUpstreamError(err: unknown, model?: string): HttpException {
  if (err instanceof HttpException) return err;
  const at = model ? ` (${model})` : '';
  const openaiRequestId = upstreamRequestId(err);
  if (err instanceof AttemptTimeoutError || err instanceof APIConnectionTimeoutError) {
    return new OpenAIUpstreamTimeoutException(`The model provider did not answer in time${at}`, {
      cause: err,
      openaiRequestId,
    });
  }
  if (err instanceof APIConnectionError) {
    return new OpenAIUpstreamException(`Could not reach the model provider${at}`, { cause: err });
  }
  if (err instanceof APIError && err.status !== undefined) {
    const s = err.status;
    const code = typeof err.code === 'string' ? err.code : undefined;
    if (s === 401 || s === 403) {
      return new OpenAIUpstreamException('The model provider refused our credentials', {
        cause: err,
        openaiRequestId,
        error: 'upstream_auth_error',
      });
    }
    if (s === 404 && (code === 'model_not_found' || /model/i.test(err.message))) {
      return new OpenAIBadRequestException(
        model ? `Model "${model}" is not available` : 'The model is not available',
        {
          cause: err,
          openaiRequestId,
          error: 'model_not_found',
        },
      );
    }
    if (s === 400 || s === 422) {
      // The upstream's code, parameter and text stay in the log: a client body carries our words only.
      return new OpenAIBadRequestException('The model provider rejected the request', {
        cause: err,
        openaiRequestId,
      });
    }
    if (s === 429 && code === 'insufficient_quota') {
      return new OpenAIUpstreamException('The model provider quota is exhausted', {
        cause: err,
        openaiRequestId,
        error: 'upstream_quota_exceeded',
      });
    }
    if (s === 408)
      return new OpenAIUpstreamTimeoutException(`The model provider timed out${at}`, {
        cause: err,
        openaiRequestId,
      });
    return new OpenAIUpstreamException(`The model provider failed (HTTP ${s}${model ? `, ${model}` : ''})`, {
      cause: err,
      openaiRequestId,
    });
  }
  return new OpenAIUpstreamException(`The model provider call failed${at}`, { cause: err });
}

/** One line describing an error for the log: name, status and message, secrets redacted, at most 300 characters. */
export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const status = (err as { status?: number }).status;
    return redactSecrets(`${err.name}${status ? ` ${status}` : ''}: ${err.message}`).slice(0, 300);
  }
  return redactSecrets(String(err)).slice(0, 300);
}

/**
 * Logs a failed upstream call as one structured line: the mapped status and code, and what the client
 * body leaves out (the upstream's status, code, parameter and message, redacted). An upstream 401/403 is
 * an error with the key's fingerprint (never the key); a cancelled call is info; the rest warnings.
 * Shared by `OpenAIService` and `OpenAIExceptionFilter` (SDK errors from `@InjectOpenAI()` calls).
 */
export function logUpstreamFailure(
  logger: Pick<Logger, 'log' | 'warn' | 'error'>,
  mapped: HttpException,
  fields: Record<string, unknown>,
  keyFingerprint?: string,
): void {
  const cause = (mapped as { cause?: unknown }).cause;
  const upstream = cause instanceof APIError ? cause : undefined;
  const status = mapped.getStatus();
  const line: Record<string, unknown> = {
    ...fields,
    openai_request_id: (mapped as { openaiRequestId?: string }).openaiRequestId ?? upstreamRequestId(cause),
    status,
    error: (mapped.getResponse() as { error?: string }).error,
    upstream_status: upstream?.status,
    upstream_code:
      typeof upstream?.code === 'string' ? redactSecrets(upstream.code).slice(0, 100) : undefined,
    upstream_param:
      typeof upstream?.param === 'string' ? redactSecrets(upstream.param).slice(0, 100) : undefined,
    cause: cause ? describeError(cause) : undefined,
  };
  for (const k of Object.keys(line)) if (line[k] === undefined) delete line[k];
  if (upstream?.status === 401 || upstream?.status === 403) {
    logger.error(keyFingerprint ? { ...line, key: keyFingerprint } : line);
  } else if (status === 499) {
    logger.log(line);
  } else {
    logger.warn(line);
  }
}
