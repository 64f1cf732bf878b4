import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { decode, encode } from 'gpt-tokenizer/encoding/o200k_base';
import {
  countChatPromptTokens,
  countTextTokens,
  messageText,
  type CountableChatMessage,
} from '../tokens/token-counter.js';
import { isRecord } from '../utils/is-record.js';

export { countChatPromptTokens, countTextTokens, type CountableChatMessage };

/** Special-token text in replies is encoded as plain text instead of throwing. */
const ENCODE_OPTIONS = { disallowedSpecial: new Set<string>() };

// ---------------------------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------------------------

/**
 * The moderation categories reported by `POST /v1/moderations`, in the order OpenAI documents them for
 * `omni-moderation-latest`. Every result carries all of them in `categories`, `category_scores` and
 * `category_applied_input_types`.
 */
export const MODERATION_CATEGORIES = [
  'harassment',
  'harassment/threatening',
  'hate',
  'hate/threatening',
  'illicit',
  'illicit/violent',
  'self-harm',
  'self-harm/intent',
  'self-harm/instructions',
  'sexual',
  'sexual/minors',
  'violence',
  'violence/graphic',
] as const;

/** One of {@link MODERATION_CATEGORIES}. */
export type ModerationCategory = (typeof MODERATION_CATEGORIES)[number];

/**
 * Default moderation triggers: an input containing the key (case-insensitive substring) is flagged with the listed
 * categories (score 0.95, `true`); everything else scores 0.0001 and `false`.
 *
 * - `FLAG_ME` → `harassment`
 * - `KILL_ME_NOW` → `self-harm`, `self-harm/intent`
 */
export const DEFAULT_MODERATION_TRIGGERS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  FLAG_ME: Object.freeze(['harassment']),
  KILL_ME_NOW: Object.freeze(['self-harm', 'self-harm/intent']),
});

/** Model ids served by `GET /v1/models` and `GET /v1/models/:id` unless {@link FakeOpenAIServerOptions.models} is set. */
export const DEFAULT_FAKE_MODELS: readonly string[] = Object.freeze([
  'gpt-4o',
  'gpt-4o-2024-08-06',
  'gpt-4o-mini',
  'gpt-4o-mini-2024-07-18',
  'omni-moderation-latest',
  'text-embedding-3-small',
]);

/** The chat request as handed to {@link FakeOpenAIServerOptions.reply} and {@link FakeOpenAIServerOptions.cachedTokens}. */
export interface FakeChatRequest {
  /** `body.model`, as sent. */
  model: string;
  /** `body.messages`, as sent (not validated beyond "is an array"). */
  messages: unknown[];
  /** The effective completion limit in tokens: `max_completion_tokens ?? max_tokens`, when either was sent. */
  max_tokens?: number;
  /** The whole parsed request body, for anything else (tools, response_format, temperature, ...). */
  body: Record<string, unknown>;
}

/** {@link FakeChatRequest} plus the prompt token count the server computed, for {@link FakeOpenAIServerOptions.cachedTokens}. */
export interface FakeUsageRequest extends FakeChatRequest {
  /** `usage.prompt_tokens` that will be reported (see {@link countChatPromptTokens}). */
  promptTokens: number;
}

/** Produces the assistant's completion text for a chat request. Must be synchronous and should be deterministic. */
export type FakeReplyFn = (req: FakeChatRequest) => string;

/** Options for {@link FakeOpenAIServer.start}. All optional. */
export interface FakeOpenAIServerOptions {
  /** TCP port to listen on. Default `0` (an ephemeral free port; read it back from {@link FakeOpenAIServer.baseURL}). */
  port?: number;
  /** Interface to bind. Default `'127.0.0.1'`. */
  host?: string;
  /**
   * Accepted API keys. When set, a request whose `Authorization: Bearer <key>` is missing or not in the list gets
   * `401` with code `invalid_api_key`. Default: any key (or none) is accepted. Can be changed later with
   * {@link FakeOpenAIServer.setApiKeys}.
   */
  apiKeys?: string[];
  /**
   * Moderation triggers: trigger text (matched as a case-insensitive substring of each input) → categories flagged.
   * Replaces (does not merge with) {@link DEFAULT_MODERATION_TRIGGERS}. A flagged category scores 0.95 and is `true`;
   * all others score 0.0001 and are `false`.
   */
  moderationTriggers?: Record<string, string[]>;
  /**
   * The completion text for `POST /v1/chat/completions`. Default: `` `Echo: ${text of the last user message}` ``
   * (content-part arrays are joined with `\n`, non-text parts ignored). Truncated to the request's
   * `max_completion_tokens` / `max_tokens` if longer. If it throws, the server answers `500 server_error`.
   */
  reply?: FakeReplyFn;
  /**
   * `usage.prompt_tokens_details.cached_tokens` to report, in tokens, or a function computing it per request.
   * Clamped to `[0, prompt_tokens]`. Default `0`.
   */
  cachedTokens?: number | ((req: FakeUsageRequest) => number);
  /**
   * `usage.completion_tokens_details.reasoning_tokens` to report, in tokens. Default `0`. As on the real API,
   * reasoning tokens are part of `completion_tokens` and count against `max_completion_tokens`.
   */
  reasoningTokens?: number;
  /** Delay between consecutive SSE events of a streamed chat completion, in ms. Default `0`. */
  streamChunkDelayMs?: number;
  /** Length of each embedding vector when the request has no `dimensions`. Default `8`. */
  embeddingDimensions?: number;
  /** Model ids listed by `GET /v1/models`. Default {@link DEFAULT_FAKE_MODELS}. Chat/embeddings accept any model. */
  models?: string[];
}

/**
 * A programmed fault. Rules are checked in the order they were added; the first rule that matches the request (and
 * has uses left) is applied and its remaining use count decremented. Requests that match no rule are served normally.
 *
 * Effects are applied in this order: `delayMs` (wait), then the first of `hang`, `drop`, `status`, `malformed`, then
 * the streaming effects. `retryAfterMs` / `retryAfter` / `headers` are added to whatever response is sent.
 * Faults are applied before the API-key check and request validation (they model the transport/gateway).
 */
export interface FaultRule {
  /** Only requests to this path, e.g. `'/v1/chat/completions'` (query string ignored). Default: any path. */
  path?: string;
  /** Only requests whose `body.model` equals this. Default: any model (or none). */
  model?: string;
  /** How many matching requests this rule applies to. Default `Infinity`. */
  times?: number;
  /**
   * Respond with this HTTP status and an OpenAI-style error body `{ error: { message, type, param, code } }`, with a
   * type/code fitting the status (e.g. 429 → `rate_limit_exceeded`, 500 → `server_error`).
   */
  status?: number;
  /** Override `error.code` of the `status` error body (e.g. `'insufficient_quota'`). */
  errorCode?: string | null;
  /** Override `error.type` of the `status` error body. */
  errorType?: string;
  /** Override `error.message` of the `status` error body. */
  errorMessage?: string;
  /** Sets response header `retry-after-ms` (milliseconds). */
  retryAfterMs?: number;
  /** Sets response header `retry-after` (seconds). */
  retryAfter?: number;
  /** Extra response headers (e.g. `{ 'x-should-retry': 'false' }`). */
  headers?: Record<string, string>;
  /** Wait this long before responding, in ms. Works with or without the other effects. */
  delayMs?: number;
  /** Never respond; the request stays open until the client gives up or {@link FakeOpenAIServer.close} is called. */
  hang?: boolean;
  /** Destroy the socket without sending any response (the SDK sees a connection error). */
  drop?: boolean;
  /**
   * `200` with `content-type: application/json` and a body that is not valid JSON. For a streaming request the
   * response is instead `text/event-stream` whose first event's data is not valid JSON.
   */
  malformed?: boolean;
  /**
   * Streaming only: after the initial role chunk, send this many content chunks (or all of them, if the reply has
   * fewer), then destroy the socket: no finish chunk, no usage chunk, no `data: [DONE]`. A rule with a streaming-only
   * effect (this, `streamStallAfterChunks`, `omitDone`) matches streaming requests only.
   */
  streamCutAfterChunks?: number;
  /**
   * Streaming only: after the initial role chunk, send this many content chunks (or all of them, if fewer), then
   * stall forever with the socket open (until the client aborts or {@link FakeOpenAIServer.close}).
   */
  streamStallAfterChunks?: number;
  /** Streaming only: send every chunk (incl. the usage chunk if requested) but end the response without `data: [DONE]`. */
  omitDone?: boolean;
  /**
   * Serve the request normally but without `usage`: JSON replies drop the field, streams send no usage chunk (as some
   * OpenAI-compatible servers and proxies do).
   */
  omitUsage?: boolean;
  /**
   * Answer `200` with this JSON body instead of serving the request (e.g. a moderation reply of an unexpected shape).
   * Sent as is, with the usual headers.
   */
  replyBody?: unknown;
}

/** A request the server received. Recorded as soon as its body has been read, before any fault is applied. */
export interface RecordedRequest {
  /** HTTP method, e.g. `'POST'`. */
  method: string;
  /** Path without query string, e.g. `'/v1/chat/completions'`. */
  path: string;
  /** Raw request target including any query string. */
  url: string;
  /** Request headers (lower-cased names). */
  headers: Record<string, string | string[] | undefined>;
  /** Parsed JSON body; the raw text if it was not valid JSON; `undefined` when empty. */
  body: any;
  /** `body.model`, when it is a string. */
  model?: string;
  /** Arrival time, `performance.now()` in ms. */
  at: number;
  /** The `x-request-id` the server answered (or, for `drop`/`hang`, would have answered) with: `req_` + 32 hex. */
  requestId: string;
  /** `body.stream === true`. */
  stream: boolean;
  /** The fault rule applied to this request, if any (the same object passed to {@link FakeOpenAIServer.fault}). */
  fault?: FaultRule;
}

// ---------------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------------

class HttpError extends Error {
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

function defaultErrorFor(status: number): { type: string; code: string | null; message: string } {
  switch (status) {
    case 400:
      return { type: 'invalid_request_error', code: null, message: 'Bad request (fake fault).' };
    case 401:
      return {
        type: 'invalid_request_error',
        code: 'invalid_api_key',
        message: 'Incorrect API key provided.',
      };
    case 403:
      return {
        type: 'invalid_request_error',
        code: 'permission_denied',
        message: 'Permission denied (fake fault).',
      };
    case 404:
      return { type: 'invalid_request_error', code: 'not_found', message: 'Not found (fake fault).' };
    case 408:
      return { type: 'invalid_request_error', code: 'timeout', message: 'Request timed out (fake fault).' };
    case 409:
      return { type: 'invalid_request_error', code: 'conflict', message: 'Conflict (fake fault).' };
    case 422:
      return { type: 'invalid_request_error', code: null, message: 'Unprocessable entity (fake fault).' };
    case 429:
      return {
        type: 'requests',
        code: 'rate_limit_exceeded',
        message: 'Rate limit reached for requests (fake fault). Please try again later.',
      };
    case 502:
      return { type: 'server_error', code: 'bad_gateway', message: 'Bad gateway (fake fault).' };
    case 503:
      return {
        type: 'server_error',
        code: 'service_unavailable',
        message: 'The server is overloaded or not ready yet (fake fault).',
      };
    case 504:
      return { type: 'server_error', code: 'gateway_timeout', message: 'Gateway timeout (fake fault).' };
    default:
      if (status >= 500) {
        return {
          type: 'server_error',
          code: 'server_error',
          message: 'The server had an error while processing your request. Sorry about that! (fake fault)',
        };
      }
      return { type: 'invalid_request_error', code: null, message: `HTTP ${status} (fake fault).` };
  }
}

function newRequestId(): string {
  return `req_${randomBytes(16).toString('hex')}`;
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
function randomAlnum(length: number): string {
  const bytes = randomBytes(length);
  let out = '';
  for (const b of bytes) out += ALNUM[b % ALNUM.length];
  return out;
}

function bearerKey(header: string | string[] | undefined): string | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  const match = value ? /^Bearer\s+(.+)$/i.exec(value.trim()) : null;
  return match ? match[1]!.trim() : undefined;
}

function maskKey(key: string): string {
  return key.length <= 8 ? '***' : `${key.slice(0, 3)}***${key.slice(-4)}`;
}

/** Deterministic unit-length vector from a hash of `seed`, rounded to float32 so JSON and base64 forms agree. */
function embeddingFor(seed: string, dimensions: number): number[] {
  const values: number[] = [];
  for (let block = 0; values.length < dimensions; block++) {
    const digest = createHash('sha256').update(`${block}:`).update(seed).digest();
    for (let i = 0; i + 4 <= digest.length && values.length < dimensions; i += 4) {
      values.push(digest.readUInt32LE(i) / 0xffffffff - 0.5);
    }
  }
  const norm = Math.sqrt(values.reduce((s, v) => s + v * v, 0)) || 1;
  return values.map((v) => Math.fround(v / norm));
}

function float32Base64(values: number[]): string {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeFloatLE(v, i * 4));
  return buf.toString('base64');
}

/** Splits into word-ish pieces whose concatenation is exactly `text`. */
function streamPieces(text: string): string[] {
  return text.match(/^\s+|\S+\s*/g) ?? [];
}

function isPositiveInt(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1;
}

function isStreamOnly(rule: FaultRule): boolean {
  return (
    rule.streamCutAfterChunks !== undefined ||
    rule.streamStallAfterChunks !== undefined ||
    rule.omitDone === true
  );
}

interface ActiveFault {
  rule: FaultRule;
  remaining: number;
}

interface RequestContext {
  req: IncomingMessage;
  res: ServerResponse;
  record: RecordedRequest;
  fault?: FaultRule;
  /** Set once headers/body have been sent, the socket dropped, or a hang/stall started. */
  finished: boolean;
}

// ---------------------------------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------------------------------

/**
 * A real HTTP server on loopback that speaks enough of the OpenAI REST API for the official `openai` SDK to talk to
 * it: chat completions (JSON and SSE streaming, with usage), moderations, embeddings (float and base64) and models,
 * with programmable faults (status codes with Retry-After, delays, hangs, dropped connections, malformed bodies,
 * cut/stalled streams). Every request is recorded.
 *
 * @example
 * ```ts
 * const server = await FakeOpenAIServer.start();
 * const client = new OpenAI({ apiKey: 'test', baseURL: server.baseURL, maxRetries: 0 });
 * server.fault({ path: '/v1/chat/completions', status: 429, retryAfterMs: 50, times: 1 });
 * // ... exercise your code ...
 * expect(server.requestsTo('/v1/chat/completions')).toHaveLength(2);
 * await server.close();
 * ```
 */
export class FakeOpenAIServer {
  /** Base URL to pass to `new OpenAI({ baseURL })`, e.g. `'http://127.0.0.1:54321/v1'`. */
  readonly baseURL: string;
  /** The TCP port the server listens on. */
  readonly port: number;
  /** Every request received, in arrival order, including faulted, dropped and hung ones. Cleared by {@link reset}. */
  readonly requests: RecordedRequest[] = [];

  private readonly server: Server;
  private readonly options: FakeOpenAIServerOptions;
  private readonly sockets = new Set<Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private faults: ActiveFault[] = [];
  private apiKeys: Set<string> | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(server: Server, options: FakeOpenAIServerOptions, host: string) {
    this.server = server;
    this.options = options;
    this.apiKeys = options.apiKeys ? new Set(options.apiKeys) : undefined;
    this.port = (server.address() as AddressInfo).port;
    const hostPart = host.includes(':') ? `[${host}]` : host;
    this.baseURL = `http://${hostPart}:${this.port}/v1`;
    server.on('connection', (socket: Socket) => {
      if (this.closed) {
        socket.destroy();
        return;
      }
      this.sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => this.sockets.delete(socket));
    });
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((err: unknown) => {
        // Last resort: never leave a request hanging because of a bug in a handler.
        if (!res.headersSent && !res.destroyed) {
          this.sendJson(res, newRequestId(), performance.now(), 500, {
            error: { message: String(err), type: 'server_error', param: null, code: 'server_error' },
          });
        } else {
          res.destroy();
        }
      });
    });
  }

  /** Starts a server listening on `options.host` (default `127.0.0.1`) and `options.port` (default `0`: ephemeral). */
  static start(options: FakeOpenAIServerOptions = {}): Promise<FakeOpenAIServer> {
    const host = options.host ?? '127.0.0.1';
    const server = createServer();
    server.on('clientError', (_err, socket) => socket.destroy());
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, host, () => {
        server.off('error', reject);
        resolve(new FakeOpenAIServer(server, { ...options }, host));
      });
    });
  }

  /**
   * Recorded requests to `path` (e.g. `'/v1/chat/completions'`, query string ignored), optionally only those whose
   * `body.model` equals `model`. In arrival order.
   */
  requestsTo(path: string, model?: string): RecordedRequest[] {
    return this.requests.filter((r) => r.path === path && (model === undefined || r.model === model));
  }

  /**
   * Programs a fault. Rules are matched in the order added; each applies to at most `times` matching requests
   * (default `Infinity`). See {@link FaultRule}.
   */
  fault(rule: FaultRule): this {
    const times = rule.times ?? Infinity;
    if (!(times >= 0)) throw new RangeError(`FaultRule.times must be >= 0, got ${rule.times}`);
    if (
      rule.status !== undefined &&
      !(Number.isInteger(rule.status) && rule.status >= 100 && rule.status <= 599)
    ) {
      throw new RangeError(`FaultRule.status must be an HTTP status code, got ${rule.status}`);
    }
    this.faults.push({ rule, remaining: times });
    return this;
  }

  /** Removes every programmed fault (including partly used ones). */
  clearFaults(): this {
    this.faults = [];
    return this;
  }

  /**
   * Clears recorded requests (in place: the {@link requests} array keeps its identity) and all faults with their use
   * counters. API keys and start options are kept.
   */
  reset(): this {
    this.requests.length = 0;
    return this.clearFaults();
  }

  /**
   * Sets the accepted API keys. When set, a request whose Bearer key is missing or not in the list gets
   * `401 invalid_api_key`. `undefined` accepts everything again.
   */
  setApiKeys(keys: string[] | undefined): this {
    this.apiKeys = keys ? new Set(keys) : undefined;
    return this;
  }

  /**
   * Stops the server: stops listening, cancels pending delays, and destroys every open socket, including hung
   * requests and stalled streams, so it never waits on a client. Idempotent.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.closing = new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.sockets) s.destroy();
      this.sockets.clear();
      this.server.closeAllConnections();
    });
    return this.closing;
  }

  // -------------------------------------------------------------------------------------------------------------------

  /** Resolves after `ms`; never resolves if the server is closed meanwhile (the socket is destroyed anyway). */
  private sleep(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.timers.delete(t);
        resolve();
      }, ms);
      this.timers.add(t);
    });
  }

  private readBody(req: IncomingMessage): Promise<string> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      // An aborted upload: treat what arrived as the body; the response will go nowhere anyway.
      req.on('error', () => resolve(Buffer.concat(chunks).toString('utf8')));
    });
  }

  private matchFault(record: RecordedRequest): FaultRule | undefined {
    for (const active of this.faults) {
      const { rule } = active;
      if (active.remaining <= 0) continue;
      if (rule.path !== undefined && rule.path !== record.path) continue;
      if (rule.model !== undefined && rule.model !== record.model) continue;
      if (isStreamOnly(rule) && !record.stream) continue;
      active.remaining -= 1;
      return rule;
    }
    return undefined;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const startedAt = performance.now();
    const requestId = newRequestId();
    const rawUrl = req.url ?? '/';
    const path = rawUrl.split('?')[0]!;
    const method = (req.method ?? 'GET').toUpperCase();
    const text = await this.readBody(req);

    let body: unknown;
    let jsonError = false;
    if (text.length > 0) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
        jsonError = true;
      }
    }
    const record: RecordedRequest = {
      method,
      path,
      url: rawUrl,
      headers: { ...req.headers },
      body,
      model: isRecord(body) && typeof body.model === 'string' ? body.model : undefined,
      at: startedAt,
      requestId,
      stream: isRecord(body) && body.stream === true,
    };
    this.requests.push(record);
    if (this.closed) {
      res.destroy();
      return;
    }

    const ctx: RequestContext = { req, res, record, finished: false };
    const fault = this.matchFault(record);
    if (fault) {
      record.fault = fault;
      ctx.fault = fault;
      for (const [k, v] of Object.entries(fault.headers ?? {})) res.setHeader(k, v);
      if (fault.retryAfterMs !== undefined) res.setHeader('retry-after-ms', String(fault.retryAfterMs));
      if (fault.retryAfter !== undefined) res.setHeader('retry-after', String(fault.retryAfter));
      if (fault.delayMs) await this.sleep(fault.delayMs);
      if (res.destroyed || this.closed) return;
      if (fault.hang) return; // never respond; close() destroys the socket
      if (fault.drop) {
        (res.socket ?? req.socket).destroy();
        return;
      }
      if (fault.status !== undefined) {
        const d = defaultErrorFor(fault.status);
        this.sendJson(res, requestId, startedAt, fault.status, {
          error: {
            message: fault.errorMessage ?? d.message,
            type: fault.errorType ?? d.type,
            param: null,
            code: fault.errorCode !== undefined ? fault.errorCode : d.code,
          },
        });
        return;
      }
      if (fault.replyBody !== undefined) {
        this.sendJson(res, requestId, startedAt, 200, fault.replyBody);
        return;
      }
      if (fault.malformed) {
        this.setCommonHeaders(res, requestId, startedAt);
        if (record.stream) {
          res.writeHead(200, {
            'content-type': 'text/event-stream; charset=utf-8',
            'cache-control': 'no-cache',
          });
          res.end(
            'data: {"id":"chatcmpl-broken","object":"chat.completion.chunk","choices":[{\n\ndata: [DONE]\n\n',
          );
        } else {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end('{"id":"chatcmpl-broken","object":"chat.completion","choices":[{"index":0,"message":');
        }
        return;
      }
    }

    try {
      if (jsonError) {
        throw new HttpError(
          400,
          "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP " +
            'library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)',
        );
      }
      this.checkAuth(req);
      await this.route(ctx, method, path, body);
    } catch (err) {
      if (ctx.finished || res.headersSent) {
        res.destroy();
        return;
      }
      if (err instanceof HttpError) {
        this.sendJson(res, requestId, startedAt, err.status, {
          error: { message: err.message, type: err.type, param: err.param, code: err.code },
        });
      } else {
        this.sendJson(res, requestId, startedAt, 500, {
          error: {
            message: `The fake server failed to handle the request: ${err instanceof Error ? err.message : String(err)}`,
            type: 'server_error',
            param: null,
            code: 'server_error',
          },
        });
      }
    }
  }

  private checkAuth(req: IncomingMessage): void {
    if (!this.apiKeys) return;
    const key = bearerKey(req.headers.authorization);
    if (key === undefined) {
      throw new HttpError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer " +
          'auth (i.e. Authorization: Bearer YOUR_KEY).',
        'invalid_request_error',
        null,
        'invalid_api_key',
      );
    }
    if (!this.apiKeys.has(key)) {
      throw new HttpError(
        401,
        `Incorrect API key provided: ${maskKey(key)}. You can find your API key at https://platform.openai.com/account/api-keys.`,
        'invalid_request_error',
        null,
        'invalid_api_key',
      );
    }
  }

  private async route(ctx: RequestContext, method: string, path: string, body: unknown): Promise<void> {
    if (method === 'POST' && path === '/v1/chat/completions') return this.chatCompletions(ctx, body);
    if (method === 'POST' && path === '/v1/moderations') return this.moderations(ctx, body);
    if (method === 'POST' && path === '/v1/embeddings') return this.embeddings(ctx, body);
    if (method === 'GET' && path === '/v1/models') return this.listModels(ctx);
    if (method === 'GET' && path.startsWith('/v1/models/')) {
      return this.retrieveModel(ctx, decodeURIComponent(path.slice('/v1/models/'.length)));
    }
    throw new HttpError(404, `Invalid URL (${method} ${path})`);
  }

  private setCommonHeaders(res: ServerResponse, requestId: string, startedAt: number, model?: string): void {
    res.setHeader('x-request-id', requestId);
    res.setHeader('openai-processing-ms', String(Math.max(0, Math.round(performance.now() - startedAt))));
    res.setHeader('openai-version', '2020-10-01');
    if (model) res.setHeader('openai-model', model);
  }

  private sendJson(
    res: ServerResponse,
    requestId: string,
    startedAt: number,
    status: number,
    payload: unknown,
    model?: string,
  ): void {
    if (res.headersSent || res.destroyed) return;
    this.setCommonHeaders(res, requestId, startedAt, model);
    const json = JSON.stringify(payload);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(json)),
    });
    res.end(json);
  }

  private ok(ctx: RequestContext, payload: unknown, model?: string): void {
    if (ctx.fault?.omitUsage && isRecord(payload) && 'usage' in payload) {
      const { usage: _omitted, ...rest } = payload;
      payload = rest;
    }
    this.sendJson(ctx.res, ctx.record.requestId, ctx.record.at, 200, payload, model);
    ctx.finished = true;
  }

  // ---------------------------------------------------------------------------------------------------- chat

  private async chatCompletions(ctx: RequestContext, body: unknown): Promise<void> {
    if (!isRecord(body)) throw new HttpError(400, 'The request body must be a JSON object.');
    if (typeof body.model !== 'string' || body.model.length === 0) {
      throw new HttpError(400, 'you must provide a model parameter');
    }
    if (!Array.isArray(body.messages)) {
      throw new HttpError(
        400,
        "Missing required parameter: 'messages'.",
        'invalid_request_error',
        'messages',
        'missing_required_parameter',
      );
    }
    if (body.messages.length === 0) {
      throw new HttpError(
        400,
        "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        'invalid_request_error',
        'messages',
        'empty_array',
      );
    }
    for (const param of ['max_tokens', 'max_completion_tokens'] as const) {
      if (body[param] !== undefined && body[param] !== null && !isPositiveInt(body[param])) {
        throw new HttpError(
          400,
          `Invalid '${param}': must be an integer >= 1.`,
          'invalid_request_error',
          param,
          'integer_below_min_value',
        );
      }
    }
    const model = body.model;
    const messages = body.messages as unknown[];
    const limitRaw = body.max_completion_tokens ?? body.max_tokens;
    const limit = isPositiveInt(limitRaw) ? limitRaw : undefined;
    const chatReq: FakeChatRequest = {
      model,
      messages,
      body,
      ...(limit !== undefined ? { max_tokens: limit } : {}),
    };

    const fullReply = (this.options.reply ?? defaultReply)(chatReq);
    if (typeof fullReply !== 'string') throw new Error('reply() must return a string');

    const promptTokens = countChatPromptTokens(messages as CountableChatMessage[]);
    const reasoningTokens = Math.max(0, Math.floor(this.options.reasoningTokens ?? 0));
    const replyTokens = encode(fullReply, ENCODE_OPTIONS);
    let content = fullReply;
    let visibleTokens = replyTokens.length;
    let finishReason: 'stop' | 'length' = 'stop';
    if (limit !== undefined) {
      const visibleLimit = Math.max(0, limit - reasoningTokens);
      if (replyTokens.length > visibleLimit || reasoningTokens >= limit) {
        content = decode(replyTokens.slice(0, visibleLimit));
        visibleTokens = Math.min(replyTokens.length, visibleLimit);
        finishReason = 'length';
      }
    }
    const cachedRaw =
      typeof this.options.cachedTokens === 'function'
        ? this.options.cachedTokens({ ...chatReq, promptTokens })
        : (this.options.cachedTokens ?? 0);
    const cachedTokens = Math.min(promptTokens, Math.max(0, Math.floor(Number(cachedRaw) || 0)));
    const completionTokens = visibleTokens + reasoningTokens;
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
      prompt_tokens_details: { cached_tokens: cachedTokens, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: reasoningTokens,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    };
    const id = `chatcmpl-${randomAlnum(29)}`;
    const created = Math.floor(Date.now() / 1000);
    const common = { id, created, model, service_tier: 'default', system_fingerprint: 'fp_fakeopenai' };

    if (ctx.record.stream) {
      const streamOptions = isRecord(body.stream_options) ? body.stream_options : {};
      await this.streamChat(
        ctx,
        common,
        content,
        finishReason,
        streamOptions.include_usage === true && !ctx.fault?.omitUsage ? usage : undefined,
      );
      return;
    }
    this.ok(
      ctx,
      {
        ...common,
        object: 'chat.completion',
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content, refusal: null, annotations: [] },
            logprobs: null,
            finish_reason: finishReason,
          },
        ],
        usage,
      },
      model,
    );
  }

  private async streamChat(
    ctx: RequestContext,
    common: { id: string; created: number; model: string; service_tier: string; system_fingerprint: string },
    content: string,
    finishReason: 'stop' | 'length',
    usage: object | undefined,
  ): Promise<void> {
    const { res, fault, record } = ctx;
    this.setCommonHeaders(res, record.requestId, record.at, common.model);
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
    });
    res.flushHeaders();
    ctx.finished = true;

    const delay = Math.max(0, this.options.streamChunkDelayMs ?? 0);
    let first = true;
    const send = async (data: string): Promise<boolean> => {
      if (!first && delay > 0) await this.sleep(delay);
      first = false;
      if (res.destroyed || this.closed) return false;
      return new Promise<boolean>((resolve) => {
        const onClose = (): void => resolve(false);
        res.once('close', onClose);
        res.write(`data: ${data}\n\n`, (err) => {
          res.off('close', onClose);
          resolve(!err);
        });
      });
    };
    const chunk = (choices: unknown[], extra: object = {}): string =>
      JSON.stringify({
        ...common,
        object: 'chat.completion.chunk',
        choices,
        ...(usage ? { usage: null } : {}),
        ...extra,
      });
    const choice = (delta: object, finish: string | null): object => ({
      index: 0,
      delta,
      logprobs: null,
      finish_reason: finish,
    });

    if (!(await send(chunk([choice({ role: 'assistant', content: '', refusal: null }, null)])))) return;
    const cutAfter = fault?.streamCutAfterChunks;
    const stallAfter = fault?.streamStallAfterChunks;
    const pieces = streamPieces(content);
    const stopAfter = cutAfter ?? stallAfter;
    const count = stopAfter === undefined ? pieces.length : Math.min(Math.max(0, stopAfter), pieces.length);
    for (let i = 0; i < count; i++) {
      if (!(await send(chunk([choice({ content: pieces[i] }, null)])))) return;
    }
    if (cutAfter !== undefined) {
      res.destroy();
      return;
    }
    if (stallAfter !== undefined) return; // the socket stays open until the client gives up or close()
    if (!(await send(chunk([choice({}, finishReason)])))) return;
    if (usage && !(await send(chunk([], { usage })))) return;
    if (!fault?.omitDone && !(await send('[DONE]'))) return;
    res.end();
  }

  // ---------------------------------------------------------------------------------------------------- moderations

  private moderations(ctx: RequestContext, body: unknown): void {
    if (!isRecord(body) || body.input === undefined || body.input === null) {
      throw new HttpError(
        400,
        "Missing required parameter: 'input'.",
        'invalid_request_error',
        'input',
        'missing_required_parameter',
      );
    }
    const model = typeof body.model === 'string' && body.model ? body.model : 'omni-moderation-latest';
    const input = body.input;
    // Each entry: the texts of one result, and whether that input contained an image.
    let items: Array<{ texts: string[]; image: boolean }>;
    if (typeof input === 'string') {
      items = [{ texts: [input], image: false }];
    } else if (Array.isArray(input) && input.every((x) => typeof x === 'string')) {
      items = (input as string[]).map((s) => ({ texts: [s], image: false }));
    } else if (Array.isArray(input) && input.every(isRecord)) {
      // Multimodal form: the whole array is one input and gets one result.
      const parts = input as Record<string, unknown>[];
      items = [
        {
          texts: parts
            .filter((p) => p.type === 'text' && typeof p.text === 'string')
            .map((p) => p.text as string),
          image: parts.some((p) => p.type === 'image_url'),
        },
      ];
    } else {
      throw new HttpError(
        400,
        "Invalid type for 'input': expected a string, an array of strings, or an array of content parts.",
        'invalid_request_error',
        'input',
        'invalid_type',
      );
    }

    const triggers = Object.entries(this.options.moderationTriggers ?? DEFAULT_MODERATION_TRIGGERS);
    const imageCategories = new Set<string>([
      'self-harm',
      'self-harm/intent',
      'self-harm/instructions',
      'sexual',
      'violence',
      'violence/graphic',
    ]);
    const results = items.map(({ texts, image }) => {
      const haystack = texts.join('\n').toLowerCase();
      const hit = new Set<string>();
      for (const [trigger, cats] of triggers) {
        if (trigger && haystack.includes(trigger.toLowerCase())) cats.forEach((c) => hit.add(c));
      }
      const allCategories = [
        ...MODERATION_CATEGORIES,
        ...[...hit].filter((c) => !(MODERATION_CATEGORIES as readonly string[]).includes(c)),
      ];
      const categories: Record<string, boolean> = {};
      const scores: Record<string, number> = {};
      const applied: Record<string, string[]> = {};
      for (const c of allCategories) {
        categories[c] = hit.has(c);
        scores[c] = hit.has(c) ? 0.95 : 0.0001;
        applied[c] =
          image && imageCategories.has(c)
            ? texts.length
              ? ['text', 'image']
              : ['image']
            : texts.length
              ? ['text']
              : [];
      }
      return {
        flagged: hit.size > 0,
        categories,
        category_scores: scores,
        category_applied_input_types: applied,
      };
    });
    this.ok(ctx, { id: `modr-${randomAlnum(24)}`, model, results }, model);
  }

  // ---------------------------------------------------------------------------------------------------- embeddings

  private embeddings(ctx: RequestContext, body: unknown): void {
    if (!isRecord(body)) throw new HttpError(400, 'The request body must be a JSON object.');
    if (typeof body.model !== 'string' || body.model.length === 0) {
      throw new HttpError(400, 'you must provide a model parameter');
    }
    const input = body.input;
    let seeds: Array<{ seed: string; tokens: number }>;
    const isTokenArray = (x: unknown): x is number[] =>
      Array.isArray(x) && x.every((n) => Number.isInteger(n));
    if (typeof input === 'string') {
      seeds = [{ seed: input, tokens: countTextTokens(input) }];
    } else if (Array.isArray(input) && input.length > 0 && input.every((x) => typeof x === 'string')) {
      seeds = (input as string[]).map((s) => ({ seed: s, tokens: countTextTokens(s) }));
    } else if (isTokenArray(input) && input.length > 0) {
      seeds = [{ seed: `tokens:${input.join(',')}`, tokens: input.length }];
    } else if (Array.isArray(input) && input.length > 0 && input.every(isTokenArray)) {
      seeds = (input as number[][]).map((t) => ({ seed: `tokens:${t.join(',')}`, tokens: t.length }));
    } else {
      throw new HttpError(
        400,
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        'invalid_request_error',
        'input',
        null,
      );
    }
    if (seeds.some((s) => s.seed === '')) {
      throw new HttpError(400, "'$.input' is invalid: empty string.", 'invalid_request_error', 'input', null);
    }
    const dims = body.dimensions ?? this.options.embeddingDimensions ?? 8;
    if (!isPositiveInt(dims)) {
      throw new HttpError(
        400,
        `Invalid 'dimensions': must be an integer >= 1.`,
        'invalid_request_error',
        'dimensions',
        null,
      );
    }
    const format = body.encoding_format ?? 'float';
    if (format !== 'float' && format !== 'base64') {
      throw new HttpError(
        400,
        `Invalid value for 'encoding_format': expected 'float' or 'base64'.`,
        'invalid_request_error',
        'encoding_format',
        null,
      );
    }
    const data = seeds.map(({ seed }, index) => {
      const vector = embeddingFor(seed, dims);
      return { object: 'embedding', index, embedding: format === 'base64' ? float32Base64(vector) : vector };
    });
    const promptTokens = seeds.reduce((s, x) => s + x.tokens, 0);
    this.ok(
      ctx,
      {
        object: 'list',
        data,
        model: body.model,
        usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
      },
      body.model,
    );
  }

  // ---------------------------------------------------------------------------------------------------- models

  private modelObject(id: string): object {
    return {
      id,
      object: 'model',
      created: 1_700_000_000,
      owned_by: id.startsWith('omni-moderation') ? 'openai' : 'system',
    };
  }

  private listModels(ctx: RequestContext): void {
    const ids = this.options.models ?? DEFAULT_FAKE_MODELS;
    this.ok(ctx, { object: 'list', data: ids.map((id) => this.modelObject(id)) });
  }

  private retrieveModel(ctx: RequestContext, id: string): void {
    const ids = this.options.models ?? DEFAULT_FAKE_MODELS;
    if (!ids.includes(id)) {
      throw new HttpError(
        404,
        `The model '${id}' does not exist`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
    }
    this.ok(ctx, this.modelObject(id));
  }
}

/** Default {@link FakeOpenAIServerOptions.reply}: `` `Echo: ${text of the last user message}` ``. */
export function defaultReply(req: FakeChatRequest): string {
  for (let i = req.messages.length - 1; i >= 0; i--) {
    const m = req.messages[i];
    if (isRecord(m) && m.role === 'user') return `Echo: ${messageText(m.content)}`;
  }
  return 'Echo: ';
}
