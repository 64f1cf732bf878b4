import { Inject, Injectable, Optional, type PipeTransform } from '@nestjs/common';
import { enforceInputLimits } from '../../call/input-limits.js';
import { RefusalRecorder } from '../../call/refusal.recorder.js';
import { OPENAI_RESOLVED_OPTIONS } from '../../openai.constants.js';
import type { ResolvedOpenAIOptions } from '../../options/openai-module-options.interface.js';
import { parseBody } from '../parse-body.js';
import { ChatRequestSchema, type ChatRequestBody } from './chat-request.schema.js';

/**
 * Validates a chat body (shape, roles, text-only content, no unknown parameters such as `logprobs`,
 * `logit_bias` or `n`) and enforces the input caps of the module's `input` options.
 * @example @Post('chat') chat(@Body(ChatRequestPipe) body: ChatRequestBody) {}
 * @throws InvalidBodyException (400), InputTooLargeException (413)
 */
@Injectable()
export class ChatRequestPipe implements PipeTransform<unknown, ChatRequestBody> {
  constructor(
    @Optional() @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options?: ResolvedOpenAIOptions,
    @Optional() private readonly refusals?: RefusalRecorder,
  ) {}

  transform(value: unknown): ChatRequestBody {
    const body = parseBody(ChatRequestSchema, value);
    try {
      if (this.options) enforceInputLimits(body, this.options.input);
    } catch (err) {
      throw this.refusals ? this.refusals.record(err) : err;
    }
    return body;
  }
}
