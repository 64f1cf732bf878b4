import { Inject, Injectable, Logger } from '@nestjs/common';
import type { NormalizedUsage } from '../call/upstream-call.js';
import type { ResolvedOpenAIOptions } from '../interfaces/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';
import { DEFAULT_PRICES, type ModelPrice } from './default-prices.js';

const DATE_SUFFIX = /-(?:\d{4}-\d{2}-\d{2}|\d{4})$/;

/**
 * Prices calls from the price table: the shipped `DEFAULT_PRICES` overlaid with `pricing.models`.
 * A model without a price is reported (one warning per model, and `onUnpriced` listeners such as the
 * metrics), and priced `null`, never $0.
 */
@Injectable()
export class PricingService {
  private readonly logger = new Logger('OpenAIPricing');
  private readonly table: Record<string, ModelPrice>;
  private readonly warned = new Set<string>();
  /** Listeners told of each call to a model without a price (metrics). */
  readonly unpricedListeners: Array<(model: string) => void> = [];

  constructor(@Inject(OPENAI_RESOLVED_OPTIONS) options: ResolvedOpenAIOptions) {
    this.table = { ...DEFAULT_PRICES, ...options.pricing.models };
  }

  /** The price of `model`: exact name first, then its name without the snapshot date. */
  priceOf(model: string): ModelPrice | undefined {
    return (
      this.table[model] ?? (DATE_SUFFIX.test(model) ? this.table[model.replace(DATE_SUFFIX, '')] : undefined)
    );
  }

  /**
   * Cost of `usage` on `model` in USD: uncached prompt tokens at the input price, cached ones at the
   * cached-input price, completion tokens (reasoning included) at the output price. `null` when unpriced.
   */
  cost(
    model: string,
    usage: Pick<NormalizedUsage, 'prompt_tokens' | 'cached_tokens' | 'completion_tokens'>,
  ): number | null {
    const p = this.priceOf(model);
    if (!p) {
      this.reportUnpriced(model);
      return null;
    }
    const cached = Math.min(usage.cached_tokens, usage.prompt_tokens);
    const usdPerMillion =
      (usage.prompt_tokens - cached) * p.input +
      cached * (p.cachedInput ?? p.input) +
      usage.completion_tokens * p.output;
    // Rounded to 1e-12 USD: float noise (0.000006299999999999999) gone, every real price kept exact.
    return Math.round(usdPerMillion * 1e6) / 1e12;
  }

  /** Highest cost a call may reach (USD): all prompt tokens uncached, all `maxOutputTokens` produced. `null` when unpriced. */
  maxCost(model: string, promptTokens: number, maxOutputTokens: number): number | null {
    return this.cost(model, {
      prompt_tokens: promptTokens,
      cached_tokens: 0,
      completion_tokens: maxOutputTokens,
    });
  }

  private reportUnpriced(model: string): void {
    for (const l of this.unpricedListeners) l(model);
    if (!this.warned.has(model) && this.warned.size < 1000) {
      this.warned.add(model);
      this.logger.warn(
        `Model "${model}" has no price: its cost is unknown. Add it to pricing.models (USD per 1M tokens)`,
      );
    }
  }
}
