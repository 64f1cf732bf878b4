import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import {
  countChatPromptTokens,
  countTextTokens,
  type CountableChatMessage,
} from '../tokens/token-counter.js';
import { isRecord } from '../utils/is-record.js';
import type { FakeOpenAIServerOptions, FaultRule, RecordedRequest } from './fake-openai.options.js';
import { estimateRequestTokens, RateLimitWindow } from './fake-openai.rate-limits.js';
import { chatCompletionsRoute } from './routes/chat-completions.route.js';
import { batchesRoute, FakeBatches } from './routes/batches.route.js';
import { controlRoute } from './routes/control.route.js';
import { FakeFiles, filesRoute } from './routes/files.route.js';
import { embeddingsRoute } from './routes/embeddings.route.js';
import { listModelsRoute, retrieveModelRoute } from './routes/models.route.js';
import { moderationsRoute } from './routes/moderations.route.js';
import { responsesRoute } from './routes/responses.route.js';
import { HttpError, newRequestId, type RouteContext, type SseWriter } from './routes/route-helpers.js';

export { countChatPromptTokens, countTextTokens, type CountableChatMessage };
export {
  DEFAULT_FAKE_MODELS,
  DEFAULT_FAKE_RATE_LIMITS,
  DEFAULT_MODEL_ALIASES,
  DEFAULT_MODERATION_TRIGGERS,
  MODERATION_CATEGORIES,
  type FakeChatRequest,
  type FakeOpenAIServerOptions,
  type FakeRateLimits,
  type FakeReplyFn,
  type FakeUsageRequest,
  type FaultRule,
  type ModerationCategory,
  type RecordedRequest,
} from './fake-openai.options.js';
export { defaultReply, TOOL_CALL_TRIGGER } from './routes/chat-completions.route.js';

// The server itself: listening, recording, fault rules, auth and dispatch to one route module per endpoint
// (lib/testing/routes/).

function defaultErrorFor(
  status: number,
  code?: string | null,
): { type: string; code: string | null; message: string } {
  if (code === 'insufficient_quota') {
    return {
      type: 'insufficient_quota',
      code,
      message:
        'You exceeded your current quota, please check your plan and billing details. For more information on this ' +
        'error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.',
    };
  }
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

function bearerKey(header: string | string[] | undefined): string | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  const match = value ? /^Bearer\s+(.+)$/i.exec(value.trim()) : null;
  return match ? match[1]!.trim() : undefined;
}

function maskKey(key: string): string {
  return key.length <= 8 ? '***' : `${key.slice(0, 3)}***${key.slice(-4)}`;
}

function isStreamOnly(rule: FaultRule): boolean {
  return (
    rule.streamCutAfterChunks !== undefined ||
    rule.streamStallAfterChunks !== undefined ||
    rule.streamFailAfterChunks !== undefined ||
    rule.streamErrorEventAfterChunks !== undefined ||
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

/**
 * A real HTTP server on loopback that speaks enough of the OpenAI REST API for the official `openai` SDK to talk to
 * it: chat completions (JSON and SSE streaming, with usage, tool calls, `n`, JSON-schema replies, logprobs and
 * in-request moderation), responses (JSON and typed SSE events), moderations, embeddings (float and base64) and
 * models, with `x-ratelimit-*` headers on every reply and programmable faults (status codes with Retry-After, delays,
 * hangs, dropped connections, malformed bodies, cut/stalled/failed streams). Every request is recorded.
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
  /** Files uploaded (`POST /v1/files`) and written by batches. */
  readonly files = new FakeFiles();
  /** Batches (`/v1/batches`): drive them with `complete(id)`, `fail(id)`, `expire(id)`. */
  readonly batches: FakeBatches;

  private readonly server: Server;
  private readonly options: FakeOpenAIServerOptions;
  private readonly sockets = new Set<Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private faults: ActiveFault[] = [];
  private readonly rateLimits: RateLimitWindow;
  private apiKeys: Set<string> | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(server: Server, options: FakeOpenAIServerOptions, host: string) {
    this.server = server;
    this.options = options;
    this.batches = new FakeBatches(options, this.files);
    this.apiKeys = options.apiKeys ? new Set(options.apiKeys) : undefined;
    this.rateLimits = new RateLimitWindow(options.rateLimits);
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
   * counters, and starts a fresh `x-ratelimit-*` window. API keys and start options are kept.
   */
  reset(): this {
    this.requests.length = 0;
    this.rateLimits.reset();
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
    // A multipart upload (`POST /v1/files`) is kept as text for its route.
    if (text.length > 0 && /^multipart\/form-data/i.test(req.headers['content-type'] ?? '')) body = text;
    else if (text.length > 0) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
        jsonError = true;
      }
    }
    if (this.options.controlApi && path.startsWith('/_control/')) {
      controlRoute(this, req, res, path, body, jsonError);
      return;
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

    for (const [k, v] of Object.entries(this.rateLimits.take(estimateRequestTokens(body))))
      res.setHeader(k, v);
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
        const d = defaultErrorFor(fault.status, fault.errorCode);
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
            path === '/v1/responses'
              ? 'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_broken",\n\n'
              : 'data: {"id":"chatcmpl-broken","object":"chat.completion.chunk","choices":[{\n\ndata: [DONE]\n\n',
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
    const route = this.routeContext(ctx);
    if (method === 'POST' && path === '/v1/chat/completions') return chatCompletionsRoute(route, body);
    if (method === 'POST' && path === '/v1/responses') return responsesRoute(route, body);
    if (method === 'POST' && path === '/v1/moderations') return moderationsRoute(route, body);
    if (method === 'POST' && path === '/v1/embeddings') return embeddingsRoute(route, body);
    if (path === '/v1/files' || path.startsWith('/v1/files/'))
      return filesRoute(route, this.files, method, path);
    if (path === '/v1/batches' || path.startsWith('/v1/batches/'))
      return batchesRoute(route, this.batches, method, path, body);
    if (method === 'GET' && path === '/v1/models') return listModelsRoute(route);
    if (method === 'GET' && path.startsWith('/v1/models/')) {
      return retrieveModelRoute(route, decodeURIComponent(path.slice('/v1/models/'.length)));
    }
    throw new HttpError(404, `Invalid URL (${method} ${path})`);
  }

  /** The view of one request a route works with. */
  private routeContext(ctx: RequestContext): RouteContext {
    return {
      options: this.options,
      record: ctx.record,
      res: ctx.res,
      ...(ctx.fault ? { fault: ctx.fault } : {}),
      ok: (payload, model) => this.ok(ctx, payload, model),
      openStream: (model) => this.openStream(ctx, model),
    };
  }

  private openStream(ctx: RequestContext, model?: string): SseWriter {
    const { res, record } = ctx;
    this.setCommonHeaders(res, record.requestId, record.at, model);
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
    });
    res.flushHeaders();
    ctx.finished = true;
    const delay = Math.max(0, this.options.streamChunkDelayMs ?? 0);
    let first = true;
    return {
      send: async (data, event) => {
        if (!first && delay > 0) await this.sleep(delay);
        first = false;
        if (res.destroyed || this.closed) return false;
        return new Promise<boolean>((resolve) => {
          const onClose = (): void => resolve(false);
          res.once('close', onClose);
          res.write(`${event ? `event: ${event}\n` : ''}data: ${data}\n\n`, (err) => {
            res.off('close', onClose);
            resolve(!err);
          });
        });
      },
      end: () => {
        if (!res.destroyed) res.end();
      },
      destroy: () => res.destroy(),
    };
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
}
