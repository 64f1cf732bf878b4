import { Inject, Injectable, Logger } from '@nestjs/common';
import type { NormalizedUsage } from '../call/upstream-call.js';
import type { ResolvedOpenAIOptions } from '../interfaces/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';
import { DEFAULT_BATCH_PRICES, DEFAULT_PRICES, type BatchPrice, type ModelPrice } from './default-prices.js';

/** Which price applies: the standard (synchronous) one or the Batch API's. */
export type PriceTier = 'standard' | 'batch';

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
  private readonly batchTable: Record<string, BatchPrice>;
  private readonly warned = new Set<string>();
  /** Listeners told of each call to a model without a price (metrics). */
  readonly unpricedListeners: Array<(model: string) => void> = [];

  constructor(@Inject(OPENAI_RESOLVED_OPTIONS) options: ResolvedOpenAIOptions) {
    this.table = { ...DEFAULT_PRICES, ...options.pricing.models };
    // An overridden price brings its own batch price or none: never the shipped one under a custom standard price.
    this.batchTable = { ...DEFAULT_BATCH_PRICES };
    for (const [model, p] of Object.entries(options.pricing.models)) {
      if (p.batch) this.batchTable[model] = p.batch;
      else delete this.batchTable[model];
    }
  }

  /** The price of `model`: exact name first, then its name without the snapshot date. */
  priceOf(model: string): ModelPrice | undefined {
    return (
      this.table[model] ?? (DATE_SUFFIX.test(model) ? this.table[model.replace(DATE_SUFFIX, '')] : undefined)
    );
  }

  /** The Batch API price of `model`, found under the same name as its standard price. */
  batchPriceOf(model: string): BatchPrice | undefined {
    if (this.table[model]) return this.batchTable[model];
    return DATE_SUFFIX.test(model) ? this.batchTable[model.replace(DATE_SUFFIX, '')] : undefined;
  }

  /**
   * Cost of `usage` on `model` in USD: uncached prompt tokens at the input price, cached ones at the
   * cached-input price, completion tokens (reasoning included) at the output price. `null` when unpriced.
   */
  cost(
    model: string,
    usage: Pick<NormalizedUsage, 'prompt_tokens' | 'cached_tokens' | 'completion_tokens'>,
    /** `batch`: the Batch API's price ({@link batchPriceOf}). */
    tier: PriceTier = 'standard',
  ): number | null {
    const p = tier === 'batch' ? this.batchPriceOf(model) : this.priceOf(model);
    if (!p) {
      this.reportUnpriced(model, tier);
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
  maxCost(
    model: string,
    promptTokens: number,
    maxOutputTokens: number,
    tier: PriceTier = 'standard',
  ): number | null {
    return this.cost(
      model,
      { prompt_tokens: promptTokens, cached_tokens: 0, completion_tokens: maxOutputTokens },
      tier,
    );
  }

  private reportUnpriced(model: string, tier: PriceTier): void {
    for (const l of this.unpricedListeners) l(model);
    const key = tier === 'batch' ? `batch:${model}` : model;
    if (!this.warned.has(key) && this.warned.size < 1000) {
      this.warned.add(key);
      this.logger.warn(
        tier === 'batch'
          ? `Model "${model}" has no Batch API price: its batch cost is unknown. Set pricing.models["${model}"].batch (USD per 1M tokens)`
          : `Model "${model}" has no price: its cost is unknown. Add it to pricing.models (USD per 1M tokens)`,
      );
    }
  }
}
