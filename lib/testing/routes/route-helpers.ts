import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { FakeOpenAIServerOptions, FaultRule, RecordedRequest } from '../fake-openai.options.js';

// What every route module shares: the error type routes throw, the context the server hands them, SSE writing,
// ids and small parsing helpers.

/** Special-token text in replies is encoded as plain text instead of throwing. */
export const ENCODE_OPTIONS = { disallowedSpecial: new Set<string>() };

/** An error answered as OpenAI's `{ error: { message, type, param, code } }` body with `status`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/** Writes one SSE response. Every method is a no-op once the client has gone or the server closed. */
export interface SseWriter {
  /**
   * Sends `data: <data>` (preceded by `event: <event>` when given), after {@link FakeOpenAIServerOptions.streamChunkDelayMs}
   * for every event but the first. Resolves `false` when the client or server went away.
   */
  send(data: string, event?: string): Promise<boolean>;
  /** Ends the response normally. */
  end(): void;
  /** Destroys the socket (a cut connection). */
  destroy(): void;
}

/** What the server hands a route for one request. */
export interface RouteContext {
  readonly options: FakeOpenAIServerOptions;
  readonly record: RecordedRequest;
  readonly res: ServerResponse;
  /** The fault rule matched for this request, if any. */
  readonly fault?: FaultRule;
  /** Answers `200` with a JSON payload (without `usage` under the `omitUsage` fault). */
  ok(payload: unknown, model?: string): void;
  /** Starts a `200 text/event-stream` response. */
  openStream(model?: string): SseWriter;
}

export function newRequestId(): string {
  return `req_${randomBytes(16).toString('hex')}`;
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
export function randomAlnum(length: number): string {
  const bytes = randomBytes(length);
  let out = '';
  for (const b of bytes) out += ALNUM[b % ALNUM.length];
  return out;
}

export function randomHex(bytes: number): string {
  return randomBytes(bytes).toString('hex');
}

/** Splits into word-ish pieces whose concatenation is exactly `text`. */
export function streamPieces(text: string): string[] {
  return text.match(/^\s+|\S+\s*/g) ?? [];
}

export function isPositiveInt(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1;
}

/** The 400 OpenAI answers for a missing `model`. */
export function requireModel(body: Record<string, unknown>): string {
  if (typeof body.model !== 'string' || body.model.length === 0) {
    throw new HttpError(400, 'you must provide a model parameter');
  }
  return body.model;
}

/** `Math.floor` of a finite non-negative number, else 0. */
export function nonNegativeInt(value: unknown): number {
  const n = Math.floor(Number(value));
  return Number.isFinite(n) && n > 0 ? n : 0;
}
