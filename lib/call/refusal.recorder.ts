import { HttpException, Injectable, Logger } from '@nestjs/common';
import { RequestContextStore } from '../request-context/request-context.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';

/**
 * Error codes of the library's own refusals: a request turned away by a limit, a budget, an input cap,
 * moderation, or a dependency that fails closed. Upstream failures are logged as calls, not here.
 */
export const REFUSAL_CODES: ReadonlySet<string> = new Set([
  'rate_limit_exceeded',
  'token_limit_exceeded',
  'token_limit_exceeds_window',
  'budget_exceeded',
  'concurrency_limit_exceeded',
  'input_too_large',
  'input_flagged',
  'storage_unavailable',
  'moderation_unavailable',
]);

const RECORDED = Symbol.for('OPENAI:REFUSAL_RECORDED');
/** Body fields that are the refusal's own details (the limit, window, budget, categories). */
const SKIPPED_FIELDS = new Set(['statusCode', 'error', 'message', 'request_id']);

/**
 * Writes one structured log line per refused request (`request_id`, `user`, `route`, `status`, `reason`
 * and the limit's details from the error body) and counts it in `openai_refusals_total{reason}`: the
 * rate-limit and moderation monitoring of OpenAI's production checklist. Called where refusals are
 * thrown (guard, pipes, call hooks, input caps); an exception is recorded once however many of those
 * it passes.
 */
@Injectable()
export class RefusalRecorder {
  private readonly logger = new Logger('OpenAIRefusals');

  constructor(private readonly metrics: OpenAIMetricsService) {}

  /** Records `err` when it is a refusal not yet recorded; returns it, for `throw recorder.record(err)`. */
  record<T>(err: T, req?: unknown): T {
    if (!(err instanceof HttpException) || (err as Record<symbol, unknown>)[RECORDED]) return err;
    const body = err.getResponse() as Record<string, unknown>;
    const reason = typeof body?.error === 'string' ? body.error : undefined;
    if (!reason || !REFUSAL_CODES.has(reason)) return err;
    (err as Record<symbol, unknown>)[RECORDED] = true;
    this.metrics.refused(reason);
    const ctx =
      (req !== undefined ? RequestContextStore.fromRequest(req) : undefined) ?? RequestContextStore.get();
    const line: Record<string, unknown> = {
      msg: 'request refused',
      request_id: ctx?.requestId ?? body.request_id,
      user: ctx?.user ?? (ctx?.tracker?.startsWith('ip:') ? ctx.tracker : undefined),
      route: ctx?.route ?? routeOf(req),
      status: err.getStatus(),
      reason,
    };
    for (const [k, v] of Object.entries(body)) if (!SKIPPED_FIELDS.has(k) && v !== undefined) line[k] = v;
    for (const k of Object.keys(line)) if (line[k] === undefined) delete line[k];
    this.logger.warn(line);
    return err;
  }
}

/** `METHOD /pattern` of a framework request, before the request context has it (guards run first). */
function routeOf(req: unknown): string | undefined {
  const r = req as
    { method?: string; route?: { path?: string }; routeOptions?: { url?: string } } | undefined;
  const path = r?.route?.path ?? r?.routeOptions?.url;
  return path && r?.method ? `${r.method} ${path}` : undefined;
}
