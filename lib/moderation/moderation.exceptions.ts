import { HttpStatus } from '@nestjs/common';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';

/** 422: the input was flagged. `categories` names the flagged categories; never scores, never the text. */
export class ContentFlaggedException extends OpenAIHttpException {
  constructor(categories: string[], direction: 'input' | 'output' = 'input') {
    super(
      HttpStatus.UNPROCESSABLE_ENTITY,
      direction === 'input' ? 'input_flagged' : 'output_flagged',
      direction === 'input'
        ? 'The input was flagged by moderation'
        : 'The response was flagged by moderation',
      { extra: { categories } },
    );
  }
}

/** 503: the moderation endpoint failed or timed out while moderation fails closed. */
export class ModerationUnavailableException extends OpenAIHttpException {
  constructor(cause?: unknown) {
    super(
      HttpStatus.SERVICE_UNAVAILABLE,
      'moderation_unavailable',
      'Moderation is unavailable; retry shortly',
      { cause },
    );
  }
}
