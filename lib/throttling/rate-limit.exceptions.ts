import { HttpStatus } from '@nestjs/common';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';
import { StoreDegradedError } from '../storage/resilient.store.js';

/**
 * 429: a per-user limit is exhausted. The body names the window (`limit`) and `retry_after` (s);
 * `headers` carries `retry-after` for the exception filter.
 */
export class RateLimitExceededException extends OpenAIHttpException {
  readonly headers: Record<string, string>;
  constructor(kind: 'requests' | 'tokens', window: string, limit: number, retryAfterS: number) {
    super(
      HttpStatus.TOO_MANY_REQUESTS,
      kind === 'tokens' ? 'token_limit_exceeded' : 'rate_limit_exceeded',
      `${kind === 'tokens' ? 'Token' : 'Request'} limit "${window}" (${limit} ${kind} per window) exceeded; retry in ${retryAfterS} s`,
      {
        extra: { limit: window, retry_after: retryAfterS },
      },
    );
    this.headers = { 'retry-after': String(retryAfterS) };
  }
}

/** 413: a call needs more tokens than a whole window admits, so waiting would not help. */
export class TokenReservationTooLargeException extends OpenAIHttpException {
  constructor(window: string, needed: number, limit: number) {
    super(
      HttpStatus.PAYLOAD_TOO_LARGE,
      'token_limit_exceeds_window',
      `The request needs up to ${needed} tokens (prompt plus max_tokens), more than the "${window}" limit of ${limit}; shorten the prompt or lower max_tokens`,
    );
  }
}

/** 503: the shared store (Redis) is down and the failure policy is `fail-closed`. */
export class StorageUnavailableException extends OpenAIHttpException {
  constructor(cause?: unknown) {
    super(
      HttpStatus.SERVICE_UNAVAILABLE,
      'storage_unavailable',
      'Limits cannot be checked right now; retry shortly',
      { cause },
    );
  }
}

/** Rethrows a store outage under the `fail-closed` policy as a 503; any other error as is. */
export function storageUnavailable(err: unknown): never {
  if (err instanceof StoreDegradedError) throw new StorageUnavailableException(err);
  throw err;
}
