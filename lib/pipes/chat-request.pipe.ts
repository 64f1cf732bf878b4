import { HttpStatus, Injectable, type PipeTransform } from '@nestjs/common';
import type { ZodType } from 'zod';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';
import { ChatRequestSchema, type ChatRequestBody } from '../dto/chat-request.schema.js';

/** 400 for a body that does not match the schema. `issues` names paths and rules, never the values sent. */
export class InvalidBodyException extends OpenAIHttpException {
  constructor(message: string, issues: Array<{ path: string; message: string }>) {
    super(HttpStatus.BAD_REQUEST, 'invalid_body', message, { extra: { issues } });
  }
}

/** Validates a body against a zod schema compiled once; throws `InvalidBodyException` (400). */
export function parseBody<T>(schema: ZodType<T>, value: unknown): T {
  if (value === undefined || value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidBodyException('Body must be a JSON object', []);
  }
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues.slice(0, 10).map((i) => ({ path: i.path.map(String).join('.') || '(body)', message: i.message }));
  throw new InvalidBodyException(`Invalid body: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
}

/**
 * Validates a chat body (shape, roles, text-only content, no unknown parameters).
 * @example @Post('chat') chat(@Body(ChatRequestPipe) body: ChatRequestBody) {}
 */
@Injectable()
export class ChatRequestPipe implements PipeTransform<unknown, ChatRequestBody> {
  transform(value: unknown): ChatRequestBody {
    return parseBody(ChatRequestSchema, value);
  }
}
