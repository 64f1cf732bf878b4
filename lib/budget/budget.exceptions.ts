import { HttpStatus } from '@nestjs/common';
import { OpenAIHttpException } from '../errors/openai-http.exceptions.js';

/** 429 `budget_exceeded`: a spend budget has no room for this call until `resets_at`. */
export class BudgetExceededException extends OpenAIHttpException {
  readonly headers: Record<string, string>;
  constructor(scope: 'user' | 'project', period: 'day' | 'month', limitUsd: number, resetsAt: Date) {
    const retryAfter = Math.max(1, Math.ceil((resetsAt.getTime() - Date.now()) / 1000));
    super(
      HttpStatus.TOO_MANY_REQUESTS,
      'budget_exceeded',
      `The ${scope === 'user' ? 'user' : 'project'} ${period === 'day' ? 'daily' : 'monthly'} budget of $${limitUsd} is exhausted; it resets at ${resetsAt.toISOString()}`,
      {
        extra: {
          scope,
          period,
          limit_usd: limitUsd,
          resets_at: resetsAt.toISOString(),
          retry_after: retryAfter,
        },
      },
    );
    this.headers = { 'retry-after': String(retryAfter) };
  }
}

/** 400 `model_unpriced`: a budget applies and the model has no price, so the call's cost cannot be bounded. */
export class UnpricedModelException extends OpenAIHttpException {
  constructor(model: string) {
    super(
      HttpStatus.BAD_REQUEST,
      'model_unpriced',
      `Model "${model}" has no price, so the budget cannot be enforced; add it to pricing.models`,
    );
  }
}
