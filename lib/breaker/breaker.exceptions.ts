import { HttpStatus } from '@nestjs/common';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';

/**
 * 503: every model a call could use (the model and its fallbacks) has an open circuit breaker, so no
 * upstream attempt was made. `retry-after` (s) says when the first cool-down ends.
 */
export class UpstreamUnavailableException extends OpenAIHttpException {
  readonly headers: Record<string, string>;
  constructor(models: readonly string[], retryAfterMs: number) {
    const retryAfter = Math.max(1, Math.ceil(retryAfterMs / 1000));
    super(
      HttpStatus.SERVICE_UNAVAILABLE,
      'upstream_unavailable',
      `The model provider is failing for ${models.join(', ')} (circuit open); retry in ${retryAfter} s`,
      { extra: { retry_after: retryAfter } },
    );
    this.headers = { 'retry-after': String(retryAfter) };
  }
}
