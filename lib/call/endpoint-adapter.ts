import type OpenAI from 'openai';
import type { NormalizedUsage, UpstreamEndpoint } from './upstream-call.js';

/** One upstream attempt: the caller's abort signal, if any, and its timeout (whole ms, given to the SDK). */
export interface Attempt {
  signal?: AbortSignal;
  timeoutMs: number;
}

/**
 * An opened event stream, as the SDK's `Stream` is: its events, and the controller its request runs
 * under (aborting it cancels the request and ends the iteration).
 */
export interface UpstreamEventStream<Event> extends AsyncIterable<Event> {
  readonly controller: AbortController;
}

/** What the SDK's `.withResponse()` gives back. */
export interface SentReply<T> {
  data: T;
  response: Response;
  request_id?: string | null;
}

/**
 * What differs between endpoints for a non-streamed call; the pipeline (policy, cache, hooks, retries,
 * fallbacks, pricing, settlement, logging) is the same for all. Adapters hold no state.
 */
export interface EndpointAdapter<Res> {
  readonly endpoint: UpstreamEndpoint;
  /** `false`: no hooks (token limits, budgets, usage), e.g. moderations. */
  readonly metered: boolean;
  /** Sends `body` with `model` for one attempt. */
  send(
    client: OpenAI,
    body: Record<string, unknown>,
    model: string,
    attempt: Attempt,
  ): Promise<SentReply<Res>>;
  /** The reply's usage, or `undefined` when the upstream sent none (then it is estimated). */
  usage(res: Res): NormalizedUsage | undefined;
  /** Every text the reply returned (for usage estimates, output moderation and prompt logging). */
  text(res: Res): string;
  /** The service tier that served the reply (`service_tier`), when the endpoint reports one. */
  tier?(res: Res): string | undefined;
}

/** What a stream has delivered so far, filled by the stream adapter event by event. */
export interface StreamProgress {
  text: string;
  usage?: NormalizedUsage;
  finishReason: string | null;
  /** The endpoint's clean end was seen (`response.completed`; chat: checked on the wire instead). */
  completed: boolean;
  /** A terminal failure event (`response.failed`, `response.incomplete`, an `error` event). */
  failure?: Error;
  /** The upstream's in-request moderation of the output (`moderation.output`), when the call asked for it. */
  moderation?: unknown;
  /** The service tier that served the stream, when reported. */
  serviceTier?: string;
}

/** What differs between streaming endpoints: how to open one, read its events, and tell a clean end. */
export interface StreamAdapter<Event> {
  readonly endpoint: UpstreamEndpoint;
  open(
    client: OpenAI,
    body: Record<string, unknown>,
    model: string,
    attempt: Attempt,
  ): Promise<SentReply<UpstreamEventStream<Event>>>;
  /** Text this event adds to the output, if any. */
  delta(event: Event): string | undefined;
  /** Reads one event into `progress` (text, usage, finish reason, clean end, failure). */
  read(event: Event, progress: StreamProgress): void;
  /** Whether a stream whose events ended without error ended cleanly. */
  isComplete(progress: StreamProgress, response: Response): boolean;
}

/** A `service_tier` as the upstream reported it, when it is a plausible one (a short string); else undefined. */
export function reportedServiceTier(value: unknown): string | undefined {
  return typeof value === 'string' && value.length > 0 && value.length <= 32 ? value : undefined;
}

/** An upstream stream that ended in a failure event (`response.failed`, an `error` event, ...). */
export class UpstreamStreamError extends Error {
  constructor(
    readonly kind: string,
    message: string,
    /** The upstream's error code from the event, when it gave one. */
    readonly code?: string,
  ) {
    super(message);
    this.name = 'UpstreamStreamError';
  }
}
