/** Prices of one model in USD per 1M tokens. */
export interface ModelPrice {
  /** Uncached input (prompt) tokens, USD per 1M. */
  input: number;
  /** Input tokens served from OpenAI's prompt cache, USD per 1M. Defaults to `input` when absent. */
  cachedInput?: number;
  /** Output (completion, reasoning included) tokens, USD per 1M. */
  output: number;
  /**
   * Batch API prices (USD per 1M) of this model, for an entry of `pricing.models`. An override without
   * `batch` has no batch price: batch requests to it are priced `null` (unpriced), never at a guess.
   */
  batch?: BatchPrice;
  /** Flex processing prices (USD per 1M) of this model, for an entry of `pricing.models`; absent: unpriced. */
  flex?: BatchPrice;
  /** Priority processing prices (USD per 1M) of this model, for an entry of `pricing.models`; absent: unpriced. */
  priority?: BatchPrice;
}

/** Prices of one model in one service tier, USD per 1M tokens (the fields of {@link ModelPrice}). */
export type BatchPrice = Omit<ModelPrice, 'batch' | 'flex' | 'priority'>;

/** When and where the shipped prices were taken. Override or extend them with `pricing.models`. */
export const DEFAULT_PRICES_SOURCE = { asOf: '2025-08-07', url: 'https://openai.com/api/pricing' } as const;

/**
 * Standard-tier prices (USD per 1M tokens) of current OpenAI models, from {@link DEFAULT_PRICES_SOURCE}.
 * Keys are snapshot names; a snapshot not listed here is looked up by its base name (the name without
 * its date), so `gpt-4o-mini-2024-07-18` and `gpt-4o-mini` share a price unless one is listed itself.
 */
export const DEFAULT_PRICES: Readonly<Record<string, ModelPrice>> = Object.freeze({
  'gpt-5': { input: 1.25, cachedInput: 0.125, output: 10 },
  'gpt-5-mini': { input: 0.25, cachedInput: 0.025, output: 2 },
  'gpt-5-nano': { input: 0.05, cachedInput: 0.005, output: 0.4 },
  'gpt-4.1': { input: 2, cachedInput: 0.5, output: 8 },
  'gpt-4.1-mini': { input: 0.4, cachedInput: 0.1, output: 1.6 },
  'gpt-4.1-nano': { input: 0.1, cachedInput: 0.025, output: 0.4 },
  'gpt-4o': { input: 2.5, cachedInput: 1.25, output: 10 },
  'gpt-4o-2024-05-13': { input: 5, output: 15 },
  'gpt-4o-mini': { input: 0.15, cachedInput: 0.075, output: 0.6 },
  o3: { input: 2, cachedInput: 0.5, output: 8 },
  'o3-mini': { input: 1.1, cachedInput: 0.55, output: 4.4 },
  'o4-mini': { input: 1.1, cachedInput: 0.275, output: 4.4 },
  o1: { input: 15, cachedInput: 7.5, output: 60 },
  'text-embedding-3-small': { input: 0.02, output: 0 },
  'text-embedding-3-large': { input: 0.13, output: 0 },
  'text-embedding-ada-002': { input: 0.1, output: 0 },
  // Moderation is free of charge.
  'omni-moderation-latest': { input: 0, output: 0 },
  'omni-moderation-2024-09-26': { input: 0, output: 0 },
});

/**
 * When and where the Batch API prices were taken: the Batch API bills input and output at 50% of the
 * standard price (https://platform.openai.com/docs/guides/batch, "50% cost discount compared to
 * synchronous APIs"; the Batch column of https://openai.com/api/pricing), checked on the same date as the
 * standard table. Every model of {@link DEFAULT_PRICES} offers the Batch API on that date.
 */
export const DEFAULT_BATCH_PRICES_SOURCE = {
  asOf: '2025-08-07',
  url: 'https://platform.openai.com/docs/guides/batch',
  discount: 0.5,
} as const;

const half = (p: ModelPrice): BatchPrice => ({
  input: p.input * DEFAULT_BATCH_PRICES_SOURCE.discount,
  ...(p.cachedInput !== undefined
    ? { cachedInput: p.cachedInput * DEFAULT_BATCH_PRICES_SOURCE.discount }
    : {}),
  output: p.output * DEFAULT_BATCH_PRICES_SOURCE.discount,
});

/**
 * Batch API prices (USD per 1M tokens): 50% of {@link DEFAULT_PRICES} for every model that offers the Batch
 * API (see {@link DEFAULT_BATCH_PRICES_SOURCE}). Looked up like the standard table (snapshot, then base name).
 */
export const DEFAULT_BATCH_PRICES: Readonly<Record<string, BatchPrice>> = Object.freeze(
  Object.fromEntries(Object.entries(DEFAULT_PRICES).map(([model, p]) => [model, Object.freeze(half(p))])),
);

/**
 * When and where the Flex and Priority processing prices were taken: the Flex and Priority columns of
 * https://openai.com/api/pricing, and https://platform.openai.com/docs/guides/flex-processing (Flex is
 * billed at the Batch API's rates, for the models listed there), checked on the same date as the
 * standard table.
 */
export const DEFAULT_TIER_PRICES_SOURCE = {
  asOf: '2025-08-07',
  url: 'https://openai.com/api/pricing',
  flexDiscount: 0.5,
} as const;

/** Models offered with Flex processing on {@link DEFAULT_TIER_PRICES_SOURCE}'s date. */
const FLEX_MODELS = ['gpt-5', 'gpt-5-mini', 'gpt-5-nano', 'o3', 'o4-mini'] as const;

/**
 * Flex processing prices (USD per 1M tokens): the Batch API's rates (50% of {@link DEFAULT_PRICES}) for the
 * models that offer Flex (see {@link DEFAULT_TIER_PRICES_SOURCE}); other models have no Flex price.
 */
export const DEFAULT_FLEX_PRICES: Readonly<Record<string, BatchPrice>> = Object.freeze(
  Object.fromEntries(FLEX_MODELS.map((m) => [m, Object.freeze(half(DEFAULT_PRICES[m]!))])),
);

/**
 * Priority processing prices (USD per 1M tokens), from the Priority column of
 * {@link DEFAULT_TIER_PRICES_SOURCE}; models not listed have no Priority price (priced `null`, reported).
 */
export const DEFAULT_PRIORITY_PRICES: Readonly<Record<string, BatchPrice>> = Object.freeze({
  'gpt-5': { input: 2.5, cachedInput: 0.25, output: 20 },
  'gpt-5-mini': { input: 0.45, cachedInput: 0.045, output: 3.6 },
  'gpt-4.1': { input: 3.5, cachedInput: 0.875, output: 14 },
  'gpt-4.1-mini': { input: 0.7, cachedInput: 0.175, output: 2.8 },
  'gpt-4.1-nano': { input: 0.2, cachedInput: 0.05, output: 0.8 },
  'gpt-4o': { input: 4.25, cachedInput: 2.125, output: 17 },
  'gpt-4o-mini': { input: 0.25, cachedInput: 0.125, output: 1 },
  o3: { input: 3.5, cachedInput: 0.875, output: 14 },
  'o4-mini': { input: 2, cachedInput: 0.5, output: 8 },
});
