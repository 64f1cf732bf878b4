import { isRecord } from '../../utils/is-record.js';
import type { FakeOpenAIServerOptions, RecordedRequest } from '../fake-openai.options.js';
import { chatCompletionsRoute } from './chat-completions.route.js';
import type { FakeFiles } from './files.route.js';
import { responsesRoute } from './responses.route.js';
import { HttpError, newRequestId, randomAlnum, randomHex, type RouteContext } from './route-helpers.js';

// The Batch API: `POST /v1/batches`, `GET /v1/batches/:id`, `POST /v1/batches/:id/cancel`. A batch runs each line of
// its input file through the fake's own chat completions or responses route, and writes the output and error files
// (output lines shuffled, as OpenAI does not keep the input order). Progress is driven by polls
// (`batchCompletesAfterPolls`) or by the test (`server.batches.complete(id)`, `.fail(id)`, `.expire(id)`).

/** The endpoints the fake runs in a batch, and the route that serves each. */
const BATCH_ROUTES = {
  '/v1/chat/completions': chatCompletionsRoute,
  '/v1/responses': responsesRoute,
} as const;

type BatchEndpoint = keyof typeof BATCH_ROUTES;
type BatchStatus =
  | 'validating'
  | 'failed'
  | 'in_progress'
  | 'finalizing'
  | 'completed'
  | 'expired'
  | 'cancelling'
  | 'cancelled';

const TERMINAL: ReadonlySet<BatchStatus> = new Set(['completed', 'failed', 'expired', 'cancelled']);

/** One parsed line of a batch's input file. */
interface InputLine {
  custom_id: string;
  body: Record<string, unknown>;
}

/** A batch the fake holds: the `Batch` object it serves, its input lines and its poll count. */
export interface FakeBatch {
  /** The `Batch` object, as `GET /v1/batches/:id` answers it. */
  readonly batch: Record<string, unknown> & { id: string; status: BatchStatus };
  readonly lines: readonly InputLine[];
  /** Problems found when the input file was read: the batch fails on its first poll. */
  readonly invalid: Array<{ code: string; message: string; line: number | null }>;
  /** `GET /v1/batches/:id` calls so far. */
  polls: number;
}

const now = () => Math.floor(Date.now() / 1000);

/** Reads a batch input file (JSONL) into lines, collecting what OpenAI's validation would refuse. */
function readInput(content: string, endpoint: string): Pick<FakeBatch, 'lines' | 'invalid'> {
  const lines: InputLine[] = [];
  const invalid: FakeBatch['invalid'] = [];
  const seen = new Set<string>();
  content.split('\n').forEach((text, i) => {
    if (text.trim() === '') return;
    const line = i + 1;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      invalid.push({ code: 'invalid_json_line', message: `Line ${line} is not valid JSON.`, line });
      return;
    }
    if (!isRecord(parsed) || typeof parsed.custom_id !== 'string' || !isRecord(parsed.body)) {
      invalid.push({ code: 'invalid_request', message: 'Each line needs a custom_id and a body.', line });
      return;
    }
    if (parsed.method !== 'POST' || parsed.url !== endpoint) {
      invalid.push({
        code: 'mismatched_endpoint',
        message: `The line's method and url must be POST ${endpoint}.`,
        line,
      });
      return;
    }
    if (seen.has(parsed.custom_id)) {
      invalid.push({
        code: 'duplicate_custom_id',
        message: `custom_id ${parsed.custom_id} is repeated.`,
        line,
      });
      return;
    }
    seen.add(parsed.custom_id);
    lines.push({ custom_id: parsed.custom_id, body: parsed.body });
  });
  if (lines.length === 0 && invalid.length === 0) {
    invalid.push({ code: 'empty_file', message: 'The input file has no requests.', line: null });
  }
  return { lines, invalid };
}

/** Shuffles a copy of `items`; never returns the input order for two or more items. */
function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  if (out.length > 1 && out.every((x, i) => x === items[i])) out.reverse();
  return out;
}

/** The batches of one fake server. */
export class FakeBatches {
  private readonly batches = new Map<string, FakeBatch>();

  constructor(
    private readonly options: FakeOpenAIServerOptions,
    private readonly files: FakeFiles,
  ) {}

  get(id: string): FakeBatch | undefined {
    return this.batches.get(id);
  }

  /** Every batch, in creation order. */
  list(): FakeBatch[] {
    return [...this.batches.values()];
  }

  clear(): void {
    this.batches.clear();
  }

  /** `POST /v1/batches`. */
  create(body: unknown): FakeBatch {
    if (!isRecord(body)) throw new HttpError(400, 'The request body must be a JSON object.');
    const { input_file_id: inputFileId, endpoint, completion_window: window } = body;
    if (typeof inputFileId !== 'string') {
      throw new HttpError(
        400,
        "Missing required parameter: 'input_file_id'.",
        'invalid_request_error',
        'input_file_id',
      );
    }
    if (typeof endpoint !== 'string' || !Object.hasOwn(BATCH_ROUTES, endpoint)) {
      throw new HttpError(
        400,
        `The fake runs batches for ${Object.keys(BATCH_ROUTES).join(' and ')} only, got ${String(endpoint)}.`,
        'invalid_request_error',
        'endpoint',
      );
    }
    if (window !== '24h') {
      throw new HttpError(
        400,
        "Invalid 'completion_window': must be '24h'.",
        'invalid_request_error',
        'completion_window',
      );
    }
    const file = this.files.get(inputFileId);
    if (!file) {
      throw new HttpError(
        404,
        `No such File object: ${inputFileId}`,
        'invalid_request_error',
        'input_file_id',
      );
    }
    const createdAt = now();
    const { lines, invalid } = readInput(file.content, endpoint);
    const batch: FakeBatch = {
      batch: {
        id: `batch_${randomHex(16)}`,
        object: 'batch',
        endpoint,
        errors: null,
        input_file_id: inputFileId,
        completion_window: '24h',
        status: 'validating',
        output_file_id: null,
        error_file_id: null,
        created_at: createdAt,
        in_progress_at: null,
        expires_at: createdAt + 86_400,
        finalizing_at: null,
        completed_at: null,
        failed_at: null,
        expired_at: null,
        cancelling_at: null,
        cancelled_at: null,
        request_counts: { total: lines.length, completed: 0, failed: 0 },
        metadata: isRecord(body.metadata) ? body.metadata : null,
      },
      lines,
      invalid,
      polls: 0,
    };
    this.batches.set(batch.batch.id, batch);
    return batch;
  }

  /**
   * `GET /v1/batches/:id`: counts the poll, then moves the batch on: a cancelling batch is cancelled, an invalid
   * input fails, and on poll `batchCompletesAfterPolls` (default 1) it ends as `batchOutcome` (default completed).
   */
  async poll(id: string): Promise<FakeBatch> {
    const b = this.require(id);
    b.polls += 1;
    const status = b.batch.status;
    if (TERMINAL.has(status)) return b;
    if (status === 'cancelling') {
      this.finish(b, 'cancelled', { cancelled_at: now() });
      return b;
    }
    if (b.invalid.length > 0) return this.fail(id);
    const after = this.options.batchCompletesAfterPolls ?? 1;
    if (b.polls >= after) {
      const outcome = this.options.batchOutcome ?? 'completed';
      if (outcome === 'failed') return this.fail(id);
      if (outcome === 'expired') return this.expire(id);
      return this.complete(id);
    }
    if (status === 'validating') Object.assign(b.batch, { status: 'in_progress', in_progress_at: now() });
    return b;
  }

  /** `POST /v1/batches/:id/cancel`: a running batch goes to `cancelling` (and to `cancelled` on its next poll). */
  cancel(id: string): FakeBatch {
    const b = this.require(id);
    if (TERMINAL.has(b.batch.status)) {
      throw new HttpError(409, `Cannot cancel a batch with status ${b.batch.status}.`);
    }
    Object.assign(b.batch, { status: 'cancelling', cancelling_at: now() });
    return b;
  }

  /**
   * Runs every line through the fake's chat completions or responses route and completes the batch: results go to
   * the output file (shuffled), lines that failed (an API error, or `batchFailedLines`) to the error file.
   */
  async complete(id: string): Promise<FakeBatch> {
    const b = this.require(id);
    const endpoint = b.batch.endpoint as BatchEndpoint;
    const outputs: string[] = [];
    const errors: string[] = [];
    const usage = { input: 0, cached: 0, output: 0, reasoning: 0 };
    for (const line of b.lines) {
      const requestId = newRequestId();
      const lineId = `batch_req_${randomAlnum(32)}`;
      const out = await this.runLine(endpoint, line, requestId);
      if (out.status === 200) {
        const u = isRecord(out.body) && isRecord(out.body.usage) ? out.body.usage : {};
        const detail = (o: unknown, k: string) => (isRecord(o) ? Number(o[k]) || 0 : 0);
        usage.input += Number(u.prompt_tokens ?? u.input_tokens) || 0;
        usage.output += Number(u.completion_tokens ?? u.output_tokens) || 0;
        usage.cached += detail(u.prompt_tokens_details ?? u.input_tokens_details, 'cached_tokens');
        usage.reasoning += detail(u.completion_tokens_details ?? u.output_tokens_details, 'reasoning_tokens');
      }
      const text = JSON.stringify({
        id: lineId,
        custom_id: line.custom_id,
        response: { status_code: out.status, request_id: requestId, body: out.body },
        error: null,
      });
      (out.status === 200 ? outputs : errors).push(text);
    }
    this.finish(b, 'completed', {
      finalizing_at: now(),
      completed_at: now(),
      output_file_id: this.writeFile(b, 'output', shuffled(outputs)),
      error_file_id: this.writeFile(b, 'error', shuffled(errors)),
      request_counts: { total: b.lines.length, completed: outputs.length, failed: errors.length },
      usage: {
        input_tokens: usage.input,
        input_tokens_details: { cached_tokens: usage.cached },
        output_tokens: usage.output,
        output_tokens_details: { reasoning_tokens: usage.reasoning },
        total_tokens: usage.input + usage.output,
      },
    });
    return b;
  }

  /** The batch fails (as on a validation failure): no output or error file, the reasons in `errors`. */
  fail(id: string, message = 'The batch failed (fake).'): FakeBatch {
    const b = this.require(id);
    const data = b.invalid.length
      ? b.invalid.map((e) => ({ ...e, param: null }))
      : [{ code: 'batch_failed', message, param: null, line: null }];
    this.finish(b, 'failed', { failed_at: now(), errors: { object: 'list', data } });
    return b;
  }

  /** The batch expires before running its lines: each goes to the error file with code `batch_expired`. */
  expire(id: string): FakeBatch {
    const b = this.require(id);
    const errors = b.lines.map((line) =>
      JSON.stringify({
        id: `batch_req_${randomAlnum(32)}`,
        custom_id: line.custom_id,
        response: null,
        error: {
          code: 'batch_expired',
          message: 'This request could not be executed before the completion window expired.',
        },
      }),
    );
    this.finish(b, 'expired', {
      expired_at: now(),
      error_file_id: this.writeFile(b, 'error', errors),
      request_counts: { total: b.lines.length, completed: 0, failed: errors.length },
    });
    return b;
  }

  private finish(b: FakeBatch, status: BatchStatus, fields: Record<string, unknown>): void {
    Object.assign(b.batch, fields, { status });
  }

  private writeFile(b: FakeBatch, kind: 'output' | 'error', lines: string[]): string | null {
    if (lines.length === 0) return null;
    return this.files.add(`${b.batch.id}_${kind}.jsonl`, 'batch_output', lines.map((l) => `${l}\n`).join(''))
      .id;
  }

  private require(id: string): FakeBatch {
    const b = this.batches.get(id);
    if (!b)
      throw new HttpError(404, `No batch found with id '${id}'.`, 'invalid_request_error', null, 'not_found');
    return b;
  }

  /** One line through the route that serves its endpoint, answered into a value instead of a socket. */
  private async runLine(
    endpoint: BatchEndpoint,
    line: InputLine,
    requestId: string,
  ): Promise<{ status: number; body: unknown }> {
    const failed = this.options.batchFailedLines;
    if (typeof failed === 'function' ? failed(line.custom_id, line.body) : failed?.includes(line.custom_id)) {
      return {
        status: 500,
        body: {
          error: {
            message: 'The server had an error processing this request (fake batch line fault).',
            type: 'server_error',
            param: null,
            code: 'server_error',
          },
        },
      };
    }
    let answered: unknown;
    const record: RecordedRequest = {
      method: 'POST',
      path: endpoint,
      url: endpoint,
      headers: {},
      body: line.body,
      model: typeof line.body.model === 'string' ? line.body.model : undefined,
      at: performance.now(),
      requestId,
      stream: false,
    };
    const ctx: RouteContext = {
      options: this.options,
      record,
      res: undefined as never,
      ok: (payload) => {
        answered = payload;
      },
      openStream: () => {
        throw new HttpError(400, 'Streaming is not supported in a batch.', 'invalid_request_error', 'stream');
      },
    };
    try {
      if (line.body.stream === true) ctx.openStream();
      await BATCH_ROUTES[endpoint](ctx, line.body);
      return { status: 200, body: answered };
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      return {
        status: err.status,
        body: { error: { message: err.message, type: err.type, param: err.param, code: err.code } },
      };
    }
  }
}

/** `POST /v1/batches`, `GET /v1/batches/:id`, `POST /v1/batches/:id/cancel`. */
export async function batchesRoute(
  ctx: RouteContext,
  batches: FakeBatches,
  method: string,
  path: string,
  body: unknown,
): Promise<void> {
  if (method === 'POST' && path === '/v1/batches') return ctx.ok(batches.create(body).batch);
  const match = /^\/v1\/batches\/([^/]+)(\/cancel)?$/.exec(path);
  const id = match ? decodeURIComponent(match[1]!) : '';
  if (match && method === 'GET' && !match[2]) return ctx.ok((await batches.poll(id)).batch);
  if (match && method === 'POST' && match[2]) return ctx.ok(batches.cancel(id).batch);
  throw new HttpError(404, `Invalid URL (${method} ${path})`);
}
