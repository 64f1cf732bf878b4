import { Inject, Injectable, Optional, type PipeTransform } from '@nestjs/common';
import { RefusalRecorder } from '../../call/refusal.recorder.js';
import type { ResolvedOpenAIOptions } from '../../options/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../../openai.constants.js';
import { enforceInputLimits } from '../../call/input-limits.js';
import { parseBody } from '../parse-body.js';
import { responsesInputMessages } from './responses.adapter.js';
import { ResponsesRequestSchema, type ResponsesRequestBody } from './responses-request.schema.js';

/**
 * Validates a Responses body (`input` as a string or messages with text content, `instructions`, no
 * unknown parameters) and enforces the module's input caps over `instructions` and `input`.
 * @example @Post('responses') create(@Body(ResponsesRequestPipe, ModerationPipe) body: ResponsesRequestBody) {}
 * @throws InvalidBodyException (400), InputTooLargeException (413)
 */
@Injectable()
export class ResponsesRequestPipe implements PipeTransform<unknown, ResponsesRequestBody> {
  constructor(
    @Optional() @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options?: ResolvedOpenAIOptions,
    @Optional() private readonly refusals?: RefusalRecorder,
  ) {}

  transform(value: unknown): ResponsesRequestBody {
    const body = parseBody(ResponsesRequestSchema, value);
    try {
      if (this.options) enforceInputLimits({ messages: responsesInputMessages(body) }, this.options.input);
    } catch (err) {
      throw this.refusals ? this.refusals.record(err) : err;
    }
    return body;
  }
}
