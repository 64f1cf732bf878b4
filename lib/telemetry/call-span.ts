import { SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import type { HttpException } from '@nestjs/common';
import type { CallResultMeta, UpstreamCall, UpstreamEndpoint } from '../call/upstream-call.js';

// The OpenTelemetry API is a no-op until the app registers an SDK (a tracer provider): then every
// upstream call is one CLIENT span, a child of the active span (the HTTP request's, when the app traces
// requests). Names and attributes follow the GenAI semantic conventions.
const tracer = trace.getTracer('nestjs-openai-production');

const OPERATION: Record<UpstreamEndpoint, string> = {
  'chat.completions': 'chat',
  responses: 'chat',
  embeddings: 'embeddings',
  moderations: 'moderation',
};

/** Starts the span of one upstream call (all its attempts and fallbacks), as a child of the active span. */
export function startCallSpan(call: UpstreamCall): Span {
  const operation = OPERATION[call.endpoint];
  return tracer.startSpan(`${operation} ${call.model}`, {
    kind: SpanKind.CLIENT,
    attributes: {
      'gen_ai.system': 'openai',
      'gen_ai.provider.name': 'openai',
      'gen_ai.operation.name': operation,
      'gen_ai.request.model': call.model,
      ...(call.maxOutputTokens ? { 'gen_ai.request.max_tokens': call.maxOutputTokens } : {}),
      'openai.api': call.endpoint,
    },
  });
}

/** Ends a call's span with the answering model, the usage (tokens) and the upstream `x-request-id`. */
export function endCallSpan(span: Span, meta: CallResultMeta): void {
  if (span.isRecording()) {
    span.setAttributes({
      'gen_ai.response.model': meta.model,
      'gen_ai.usage.input_tokens': meta.usage.prompt_tokens,
      'gen_ai.usage.output_tokens': meta.usage.completion_tokens,
      ...(meta.openaiRequestId ? { 'openai.request.id': meta.openaiRequestId } : {}),
      ...(meta.fallbackFrom ? { 'openai.fallback_from': meta.fallbackFrom } : {}),
      'openai.attempts': meta.attempts,
      ...(meta.usage.estimated ? { 'openai.usage.estimated': true } : {}),
    });
  }
  span.end();
}

/** Ends a failed call's span: status ERROR, `error.type` the library's error code (never upstream text). */
export function failCallSpan(span: Span, err: HttpException, openaiRequestId?: string): void {
  if (span.isRecording()) {
    const code = (err.getResponse() as { error?: string }).error ?? String(err.getStatus());
    span.setAttributes({
      'error.type': code,
      'http.response.status_code': err.getStatus(),
      ...(openaiRequestId ? { 'openai.request.id': openaiRequestId } : {}),
    });
    span.setStatus({ code: SpanStatusCode.ERROR, message: code });
  }
  span.end();
}
