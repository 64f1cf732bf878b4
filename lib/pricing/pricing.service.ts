import { Inject, Injectable, Logger } from '@nestjs/common';
import { memoized } from '../utils/bounded-memo.js';
import type { NormalizedUsage } from '../call/upstream-call.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';
import {
  DEFAULT_BATCH_PRICES,
  DEFAULT_FLEX_PRICES,
  DEFAULT_PRICES,
  DEFAULT_PRIORITY_PRICES,
  type BatchPrice,
  type ModelPrice,
} from './default-prices.js';

/**
 * Which price applies: the standard (synchronous, `default` service tier) one, the Batch API's, or the
 * Flex or Priority processing tier's.
 */
export type PriceTier = 'standard' | 'batch' | 'flex' | 'priority';

/** The price tier of a `service_tier` value as the upstream reports it (`default`, `auto`, `scale`: standard). */
export function priceTierOf(serviceTier: unknown): PriceTier {
  return serviceTier === 'flex' || serviceTier === 'priority' || serviceTier === 'batch'
    ? serviceTier
    : 'standard';
}

const DATE_SUFFIX = /-(?:\d{4}-\d{2}-\d{2}|\d{4})$/;

/** `model` without its snapshot date (`''` when it has none). */
function withoutSnapshotDate(model: string): string {
  return DATE_SUFFIX.test(model) ? model.replace(DATE_SUFFIX, '') : '';
}

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
  private readonly flexTable: Record<string, BatchPrice>;
  private readonly priorityTable: Record<string, BatchPrice>;
  private readonly warned = new Set<string>();
  private readonly baseNames = new Map<string, string>();
  /** Listeners told of each call to a model without a price (metrics). */
  readonly unpricedListeners: Array<(model: string) => void> = [];

  constructor(@Inject(OPENAI_RESOLVED_OPTIONS) options: ResolvedOpenAIOptions) {
    this.table = { ...DEFAULT_PRICES, ...options.pricing.models };
    // An overridden price brings its own batch price or none: never the shipped one under a custom standard price.
    this.batchTable = { ...DEFAULT_BATCH_PRICES };
    this.flexTable = { ...DEFAULT_FLEX_PRICES };
    this.priorityTable = { ...DEFAULT_PRIORITY_PRICES };
    for (const [model, p] of Object.entries(options.pricing.models)) {
      for (const [table, price] of [
        [this.batchTable, p.batch],
        [this.flexTable, p.flex],
        [this.priorityTable, p.priority],
      ] as const) {
        if (price) table[model] = price;
        else delete table[model];
      }
    }
  }

  /** The price of `model` in a service tier, found under the same name as its standard price. */
  tierPriceOf(model: string, tier: PriceTier): BatchPrice | undefined {
    if (tier === 'standard') return this.priceOf(model);
    const table = tier === 'batch' ? this.batchTable : tier === 'flex' ? this.flexTable : this.priorityTable;
    if (this.table[model]) return table[model];
    const base = this.baseName(model);
    return base ? table[base] : undefined;
  }

  /** `model` without its snapshot date (`''` when it has none), memoized per name. */
  private baseName(model: string): string {
    return memoized(this.baseNames, model, 10_000, withoutSnapshotDate);
  }

  /** The price of `model`: exact name first, then its name without the snapshot date. */
  priceOf(model: string): ModelPrice | undefined {
    const exact = this.table[model];
    if (exact) return exact;
    const base = this.baseName(model);
    return base ? this.table[base] : undefined;
  }

  /** The Batch API price of `model`, found under the same name as its standard price. */
  batchPriceOf(model: string): BatchPrice | undefined {
    return this.tierPriceOf(model, 'batch');
  }

  /**
   * Cost of `usage` on `model` in USD: uncached prompt tokens at the input price, cached ones at the
   * cached-input price, completion tokens (reasoning included) at the output price. `null` when unpriced.
   */
  cost(
    model: string,
    usage: Pick<NormalizedUsage, 'prompt_tokens' | 'cached_tokens' | 'completion_tokens'>,
    /** The service tier's price ({@link tierPriceOf}); `standard` by default. */
    tier: PriceTier = 'standard',
  ): number | null {
    const p = this.tierPriceOf(model, tier);
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
    const key = tier === 'standard' ? model : `${tier}:${model}`;
    if (!this.warned.has(key) && this.warned.size < 1000) {
      this.warned.add(key);
      this.logger.warn(
        tier !== 'standard'
          ? `Model "${model}" has no ${tier} price: its ${tier} cost is unknown. Set pricing.models["${model}"].${tier} (USD per 1M tokens)`
          : `Model "${model}" has no price: its cost is unknown. Add it to pricing.models (USD per 1M tokens)`,
      );
    }
  }
}
