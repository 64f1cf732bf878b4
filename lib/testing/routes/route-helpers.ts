import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { decode, encode } from 'gpt-tokenizer/encoding/o200k_base';
import { isRecord } from '../../utils/is-record.js';
import {
  DEFAULT_FAKE_MODELS,
  DEFAULT_MODEL_ALIASES,
  type FakeChatRequest,
  type FakeOpenAIServerOptions,
  type FaultRule,
  type RecordedRequest,
} from '../fake-openai.options.js';

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

/**
 * The model a reply reports: the dated snapshot for an alias. With `strictModels`, an unknown model is OpenAI's 404
 * `model_not_found`.
 */
export function replyModel(options: FakeOpenAIServerOptions, model: string): string {
  const aliases = options.aliases ?? DEFAULT_MODEL_ALIASES;
  if (options.strictModels) {
    const known = options.models ?? DEFAULT_FAKE_MODELS;
    if (!known.includes(model) && !Object.hasOwn(aliases, model)) {
      throw new HttpError(
        404,
        `The model \`${model}\` does not exist or you do not have access to it.`,
        'invalid_request_error',
        null,
        'model_not_found',
      );
    }
  }
  return Object.hasOwn(aliases, model) ? aliases[model]! : model;
}

/** The generated text of one reply and the token counts reported for it. */
export interface GeneratedText {
  /** The text sent (truncated to the output limit). */
  content: string;
  /** Tokens of `content`. */
  visibleTokens: number;
  /** Reasoning tokens reported (and counted against the limit). */
  reasoningTokens: number;
  /** Cached prompt tokens reported. */
  cachedTokens: number;
  /** The output limit cut the text (or reasoning used it all). */
  truncated: boolean;
}

/**
 * Truncates `fullReply` to `req.max_tokens` (reasoning tokens count against it, as on the real API) and works out the
 * reasoning and cached token counts from the options.
 */
export function generateText(
  options: FakeOpenAIServerOptions,
  req: FakeChatRequest,
  promptTokens: number,
  fullReply: string,
): GeneratedText {
  const limit = req.max_tokens;
  const reasoningTokens = Math.max(0, Math.floor(options.reasoningTokens ?? 0));
  const replyTokens = encode(fullReply, ENCODE_OPTIONS);
  let content = fullReply;
  let visibleTokens = replyTokens.length;
  let truncated = false;
  if (limit !== undefined) {
    const visibleLimit = Math.max(0, limit - reasoningTokens);
    if (replyTokens.length > visibleLimit || reasoningTokens >= limit) {
      content = decode(replyTokens.slice(0, visibleLimit));
      visibleTokens = Math.min(replyTokens.length, visibleLimit);
      truncated = true;
    }
  }
  const cachedRaw =
    typeof options.cachedTokens === 'function'
      ? options.cachedTokens({ ...req, promptTokens })
      : (options.cachedTokens ?? 0);
  const cachedTokens = Math.min(promptTokens, Math.max(0, Math.floor(Number(cachedRaw) || 0)));
  return { content, visibleTokens, reasoningTokens, cachedTokens, truncated };
}

/**
 * The smallest value that fits a JSON schema: an object with its `required` properties filled by type, `[]` (or
 * `minItems` items), `''`, `0` (or `minimum`), `false`, `null`; the first `enum` value, `const`, the first `anyOf` /
 * `oneOf` branch; local `$ref`s (`#/$defs/...`, `#/definitions/...`) are followed.
 */
export function minimalInstance(schema: unknown, root: unknown = schema, depth = 0): unknown {
  if (!isRecord(schema) || depth > 32) return null;
  if (typeof schema.$ref === 'string' && schema.$ref.startsWith('#/')) {
    let target: unknown = root;
    for (const key of schema.$ref.slice(2).split('/')) target = isRecord(target) ? target[key] : undefined;
    return minimalInstance(target, root, depth + 1);
  }
  if ('const' in schema) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[0];
  for (const key of ['anyOf', 'oneOf', 'allOf'] as const) {
    const branches = schema[key];
    if (Array.isArray(branches) && branches.length > 0) return minimalInstance(branches[0], root, depth + 1);
  }
  const type = Array.isArray(schema.type) ? (schema.type.find((t) => t !== 'null') ?? 'null') : schema.type;
  switch (type) {
    case 'object': {
      const out: Record<string, unknown> = {};
      const props = isRecord(schema.properties) ? schema.properties : {};
      const required = Array.isArray(schema.required) ? schema.required : [];
      for (const name of required) {
        if (typeof name === 'string') out[name] = minimalInstance(props[name], root, depth + 1);
      }
      return out;
    }
    case 'array': {
      const count = nonNegativeInt(schema.minItems);
      return Array.from({ length: count }, () => minimalInstance(schema.items, root, depth + 1));
    }
    case 'string':
      return 'x'.repeat(nonNegativeInt(schema.minLength));
    case 'integer':
    case 'number':
      return typeof schema.minimum === 'number' ? schema.minimum : 0;
    case 'boolean':
      return false;
    case 'null':
      return null;
    default:
      return isRecord(schema.properties)
        ? minimalInstance({ ...schema, type: 'object' }, root, depth + 1)
        : null;
  }
}

/** Where a stream stops early under a fault, after `count` content chunks. */
export interface StreamStop {
  kind: 'cut' | 'stall' | 'fail' | 'errorEvent';
  count: number;
}

/** The early stop a fault programs for a stream of `pieces` content chunks, if any. */
export function streamStop(fault: FaultRule | undefined, pieces: number): StreamStop | undefined {
  if (!fault) return undefined;
  const kinds = [
    ['cut', fault.streamCutAfterChunks],
    ['stall', fault.streamStallAfterChunks],
    ['fail', fault.streamFailAfterChunks],
    ['errorEvent', fault.streamErrorEventAfterChunks],
  ] as const;
  for (const [kind, after] of kinds) {
    if (after !== undefined) return { kind, count: Math.min(Math.max(0, Math.floor(after)), pieces) };
  }
  return undefined;
}

/** `code` and `message` of the in-stream error a fault sends. */
export function streamErrorOf(fault: FaultRule | undefined): { code: string; message: string } {
  return {
    code: fault?.errorCode ?? 'server_error',
    message:
      fault?.errorMessage ??
      'The server had an error processing your request. Sorry about that! You can retry your request. (fake fault)',
  };
}

/** `service_tier` as OpenAI reports it: `auto` and `default` run on `default`; others are echoed. */
export function reportedTier(tier: unknown): string {
  return typeof tier === 'string' && tier !== 'auto' ? tier : 'default';
}
