import { createHash } from 'node:crypto';
import { countTextTokens } from '../../tokens/token-counter.js';
import { isRecord } from '../../utils/is-record.js';
import { HttpError, isPositiveInt, requireModel, type RouteContext } from './route-helpers.js';

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

/** `POST /v1/embeddings`. */
export function embeddingsRoute(ctx: RouteContext, body: unknown): void {
  if (!isRecord(body)) throw new HttpError(400, 'The request body must be a JSON object.');
  const model = requireModel(body);
  const input = body.input;
  let seeds: Array<{ seed: string; tokens: number }>;
  const isTokenArray = (x: unknown): x is number[] => Array.isArray(x) && x.every((n) => Number.isInteger(n));
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
  const dims = body.dimensions ?? ctx.options.embeddingDimensions ?? 8;
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
  ctx.ok(
    { object: 'list', data, model, usage: { prompt_tokens: promptTokens, total_tokens: promptTokens } },
    model,
  );
}
