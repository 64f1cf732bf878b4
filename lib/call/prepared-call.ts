import type { CallOptions, UpstreamCall } from './upstream-call.js';

/** A call after the prepare step: the normalized view, the body to send, its fallbacks and options. */
export interface PreparedCall {
  call: UpstreamCall;
  body: Record<string, unknown>;
  fallbacks: string[];
  options: CallOptions;
  /** `performance.now()` when the call started (ms). */
  started: number;
}

/** A call after the execute step: the reply, and which model answered after how many attempts. */
export interface ExecutedCall<T> {
  data: T;
  response: Response;
  openaiRequestId?: string;
  model: string;
  fallbackFrom?: string;
  attempts: number;
  /** Time spent in upstream attempts and backoff waits (ms): the rest of a call's time is the pipeline's own. */
  upstreamMs: number;
}
