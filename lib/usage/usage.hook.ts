import { Injectable } from '@nestjs/common';
import type { CallReservation, OpenAICallHook, SettledCall, UpstreamCall } from '../call/upstream-call.js';
import { PricingService } from '../pricing/pricing.service.js';
import { UsageService } from './usage.service.js';

/** Records every settled call (successful, or a stream accounted from what it received) in the usage ledger. */
@Injectable()
export class UsageHook implements OpenAICallHook {
  constructor(
    private readonly usage: UsageService,
    private readonly pricing: PricingService,
  ) {}

  reserve(call: UpstreamCall): CallReservation {
    return {
      settle: (s: SettledCall) => {
        this.usage.record({
          user: call.user,
          route: call.route,
          model: s.model,
          usage: s.usage,
          costUsd: s.costUsd !== undefined ? s.costUsd : this.pricing.cost(s.model, s.usage),
          serviceTier: s.serviceTier,
        });
      },
      release: () => undefined,
    };
  }
}
