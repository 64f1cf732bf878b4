import { Controller, Get, Req } from '@nestjs/common';
import { BudgetService, UsageService } from '../../lib/index.js';

@Controller('usage')
export class UsageController {
  constructor(
    private readonly usage: UsageService,
    private readonly budgets: BudgetService,
  ) {}

  /** The caller's totals for the current UTC day, and its daily budget. */
  @Get()
  async today(@Req() req: { user: { id: string } }) {
    const user = req.user.id;
    const [u, budget] = await Promise.all([this.usage.totals(user, 'day'), this.budgets.status(user)]);
    const daily = budget.find((b) => b.period === 'day');
    return {
      user,
      requests: u.requests,
      prompt_tokens: u.prompt_tokens,
      cached_tokens: u.cached_tokens,
      completion_tokens: u.completion_tokens,
      reasoning_tokens: u.reasoning_tokens,
      cost_usd: u.cost_usd,
      // Calls to models without a price: their cost is unknown, so it is not in cost_usd (never counted as $0).
      unpriced_requests: u.unpriced_requests,
      // Calls whose upstream sent no usage (or a stream cut before it): their tokens were counted locally.
      estimated_requests: u.estimated_requests,
      by_model: u.by_model,
      // No daily budget configured: the same shape, with null amounts.
      budget: daily
        ? {
            limit_usd: daily.limit_usd,
            remaining_usd: daily.remaining_usd,
            period: 'day',
            resets_at: daily.resets_at,
          }
        : { limit_usd: null, remaining_usd: null, period: 'day', resets_at: null },
    };
  }
}
