import { HttpException } from '@nestjs/common';
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
 * Maps what an upstream call threw to the HTTP exception the client gets. Never copies the upstream
 * message (it may quote the prompt); names the upstream code and parameter instead. Keeps `cause`.
 */
export function mapUpstreamError(err: unknown, model: string): HttpException {
  if (err instanceof HttpException) return err;
  const openaiRequestId = upstreamRequestId(err);
  if (err instanceof AttemptTimeoutError || err instanceof APIConnectionTimeoutError) {
    return new OpenAIUpstreamTimeoutException(`The model provider did not answer in time (${model})`, {
      cause: err,
      openaiRequestId,
    });
  }
  if (err instanceof APIConnectionError) {
    return new OpenAIUpstreamException(`Could not reach the model provider (${model})`, { cause: err });
  }
  if (err instanceof APIError && err.status !== undefined) {
    const s = err.status;
    const code = typeof err.code === 'string' ? err.code : undefined;
    const param = typeof err.param === 'string' ? err.param : undefined;
    if (s === 401 || s === 403) {
      return new OpenAIUpstreamException('The model provider refused our credentials', {
        cause: err,
        openaiRequestId,
        error: 'upstream_auth_error',
      });
    }
    if (s === 404 && (code === 'model_not_found' || /model/i.test(err.message))) {
      return new OpenAIBadRequestException(`Model "${model}" is not available`, {
        cause: err,
        openaiRequestId,
        error: 'model_not_found',
      });
    }
    if (s === 400 || s === 422) {
      const detail = [code, param && `param: ${param}`].filter(Boolean).join(', ');
      return new OpenAIBadRequestException(
        `The model provider rejected the request${detail ? ` (${detail})` : ''}`,
        { cause: err, openaiRequestId },
      );
    }
    if (s === 429 && code === 'insufficient_quota') {
      return new OpenAIUpstreamException('The model provider quota is exhausted', {
        cause: err,
        openaiRequestId,
        error: 'upstream_quota_exceeded',
      });
    }
    if (s === 408)
      return new OpenAIUpstreamTimeoutException(`The model provider timed out (${model})`, {
        cause: err,
        openaiRequestId,
      });
    return new OpenAIUpstreamException(`The model provider failed (HTTP ${s}, ${model})`, {
      cause: err,
      openaiRequestId,
    });
  }
  return new OpenAIUpstreamException(`The model provider call failed (${model})`, { cause: err });
}
