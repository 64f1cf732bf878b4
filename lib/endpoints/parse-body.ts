import { HttpStatus } from '@nestjs/common';
import type { ZodType } from 'zod';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';

/** 400 for a body that does not match the schema. `issues` names paths and rules, never the values sent. */
export class InvalidBodyException extends OpenAIHttpException {
  constructor(message: string, issues: Array<{ path: string; message: string }>) {
    super(HttpStatus.BAD_REQUEST, 'invalid_body', message, { extra: { issues } });
  }
}

const clip = (s: string, max = 120) => (s.length > max ? `${s.slice(0, max)}...` : s);

/** Validates a body against a zod schema compiled once; throws `InvalidBodyException` (400). */
export function parseBody<T>(schema: ZodType<T>, value: unknown): T {
  if (value === undefined || value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidBodyException('Body must be a JSON object', []);
  }
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  // zod quotes unknown keys in its messages, and a key can be most of the body: clip what is echoed.
  const issues = result.error.issues
    .slice(0, 10)
    .map((i) => ({ path: clip(i.path.map(String).join('.') || '(body)'), message: clip(i.message) }));
  throw new InvalidBodyException(
    `Invalid body: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`,
    issues,
  );
}
