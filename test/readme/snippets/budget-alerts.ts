import { Injectable, Logger, type OnModuleInit } from '@nestjs/common';
import { BudgetService } from 'nestjs-openai-production';

/** Forwards budget alerts (50 %, 80 %, 100 % of a limit, once per period) to your paging or chat tool. */
@Injectable()
export class BudgetAlerts implements OnModuleInit {
  private readonly logger = new Logger(BudgetAlerts.name);

  constructor(private readonly budgets: BudgetService) {}

  onModuleInit(): void {
    this.budgets.alerts$.subscribe((a) => {
      this.logger.warn(
        `${a.scope} ${a.user ?? ''} spent $${a.spentUsd} of $${a.limitUsd} this ${a.period} (${a.threshold * 100}%)`,
      );
    });
  }
}
