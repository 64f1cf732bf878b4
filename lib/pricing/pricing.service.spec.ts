import { Logger } from '@nestjs/common';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import type { OpenAIModuleOptions } from '../options/openai-module-options.interface.js';
import { DEFAULT_PRICES, DEFAULT_PRICES_SOURCE } from './default-prices.js';
import { PricingService } from './pricing.service.js';

const pricing = (extra: OpenAIModuleOptions = {}) =>
  new PricingService(resolveOpenAIOptions({ apiKey: 'sk-unit', environment: 'test', ...extra }));

const usage = (prompt_tokens: number, cached_tokens: number, completion_tokens: number) => ({
  prompt_tokens,
  cached_tokens,
  completion_tokens,
});

let warn: { mock: { calls: unknown[][] } };
beforeEach(() => {
  warn = vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
});
afterEach(() => {
  vi.restoreAllMocks();
});

describe('DEFAULT_PRICES', () => {
  it('is dated data with a source, and cannot be mutated', () => {
    expect(DEFAULT_PRICES_SOURCE.asOf).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(DEFAULT_PRICES_SOURCE.url).toMatch(/^https:\/\//);
    expect(Object.isFrozen(DEFAULT_PRICES)).toBe(true);
  });

  it('has no cached-input price above the input price, and no negative price', () => {
    const wrong = Object.entries(DEFAULT_PRICES).filter(
      ([, p]) =>
        !(
          p.input >= 0 &&
          p.output >= 0 &&
          (p.cachedInput ?? 0) >= 0 &&
          (p.cachedInput ?? p.input) <= p.input
        ),
    );
    expect(wrong).toEqual([]);
  });
});

describe('PricingService.priceOf', () => {
  const p = pricing();

  it('finds a listed name exactly', () => {
    expect(p.priceOf('gpt-4o-mini')).toEqual(DEFAULT_PRICES['gpt-4o-mini']);
    expect(p.priceOf('o3')).toEqual(DEFAULT_PRICES.o3);
  });

  it.each([
    ['gpt-4o-mini-2024-07-18', 'gpt-4o-mini'],
    ['gpt-4o-2024-08-06', 'gpt-4o'],
    ['gpt-4.1-2025-04-14', 'gpt-4.1'],
    ['gpt-5-mini-2025-08-07', 'gpt-5-mini'],
    ['o3-mini-2025-01-31', 'o3-mini'],
    ['o1-2024-12-17', 'o1'],
  ])('prices snapshot %s by its base name %s', (snapshot, base) => {
    expect(p.priceOf(snapshot)).toEqual(DEFAULT_PRICES[base]);
  });

  it('prefers a listed snapshot over its base name', () => {
    expect(p.priceOf('gpt-4o-2024-05-13')).toEqual({ input: 5, output: 15 });
    expect(p.priceOf('gpt-4o-2024-05-13')).not.toEqual(DEFAULT_PRICES['gpt-4o']);
  });

  it('does not strip anything but a trailing date', () => {
    expect(p.priceOf('my-gpt-4o')).toBeUndefined();
    expect(p.priceOf('gpt-4o-mini-custom')).toBeUndefined();
    expect(p.priceOf('gpt-4o-2024-08-06-ft')).toBeUndefined();
    expect(p.priceOf('acme-llm-2024-01-01')).toBeUndefined();
    expect(p.priceOf('')).toBeUndefined();
  });

  it('lays pricing.models over the table: a new model, a base name, a snapshot', () => {
    const o = pricing({
      pricing: {
        models: {
          'acme-llm': { input: 3, output: 4 },
          'gpt-4o-mini': { input: 1, cachedInput: 0.5, output: 2 },
          'gpt-4o-2024-08-06': { input: 9, output: 9 },
        },
      },
    });
    expect(o.priceOf('acme-llm')).toEqual({ input: 3, output: 4 });
    expect(o.priceOf('acme-llm-2025-02-03')).toEqual({ input: 3, output: 4 });
    expect(o.priceOf('gpt-4o-mini-2024-07-18')).toEqual({ input: 1, cachedInput: 0.5, output: 2 });
    expect(o.priceOf('gpt-4o-2024-08-06')).toEqual({ input: 9, output: 9 });
    // the base name keeps its shipped price
    expect(o.priceOf('gpt-4o')).toEqual(DEFAULT_PRICES['gpt-4o']);
    // the shipped table is untouched
    expect(DEFAULT_PRICES['gpt-4o-mini'].input).toBe(0.15);
    expect(pricing().priceOf('gpt-4o-mini-2024-07-18')).toEqual(DEFAULT_PRICES['gpt-4o-mini']);
  });
});

describe('PricingService.cost', () => {
  const p = pricing();
  const mini = DEFAULT_PRICES['gpt-4o-mini'];

  it('prices uncached prompt tokens at input and completion tokens at output (USD per 1M)', () => {
    expect(p.cost('gpt-4o-mini-2024-07-18', usage(1_000_000, 0, 0))).toBeCloseTo(mini.input, 12);
    expect(p.cost('gpt-4o-mini-2024-07-18', usage(0, 0, 1_000_000))).toBeCloseTo(mini.output, 12);
    expect(p.cost('gpt-4o-mini-2024-07-18', usage(1200, 0, 345))).toBeCloseTo(
      (1200 * 0.15 + 345 * 0.6) / 1e6,
      15,
    );
  });

  it('prices cached prompt tokens at the cached-input rate, the rest at the input rate', () => {
    const c = p.cost('gpt-4o-mini-2024-07-18', usage(2000, 1536, 100))!;
    expect(c).toBeCloseTo((464 * 0.15 + 1536 * 0.075 + 100 * 0.6) / 1e6, 15);
    expect(c).toBeLessThan(p.cost('gpt-4o-mini-2024-07-18', usage(2000, 0, 100))!);
    expect(p.cost('gpt-4.1-2025-04-14', usage(1000, 1000, 0))).toBeCloseTo((1000 * 0.5) / 1e6, 15);
  });

  it('prices cached tokens at the input rate when the model has no cached-input price', () => {
    expect(p.cost('gpt-4o-2024-05-13', usage(1000, 600, 10))).toBeCloseTo((1000 * 5 + 10 * 15) / 1e6, 15);
  });

  it('never counts more cached tokens than prompt tokens', () => {
    expect(p.cost('gpt-4o-mini', usage(100, 500, 0))).toBeCloseTo((100 * 0.075) / 1e6, 15);
  });

  it('prices reasoning tokens as output: they are part of completion_tokens, not added again', () => {
    const withReasoning = p.cost('o3-mini-2025-01-31', {
      ...usage(50, 0, 300),
      reasoning_tokens: 250,
    } as never);
    expect(withReasoning).toBeCloseTo((50 * 1.1 + 300 * 4.4) / 1e6, 15);
  });

  it('is 0 for free models (moderation), not null', () => {
    expect(p.cost('omni-moderation-latest', usage(500, 0, 0))).toBe(0);
  });

  it('maxCost assumes no cached tokens and every allowed output token', () => {
    expect(p.maxCost('gpt-4o-mini-2024-07-18', 100, 1024)).toBeCloseTo((100 * 0.15 + 1024 * 0.6) / 1e6, 15);
    expect(p.maxCost('acme-llm', 100, 1024)).toBeNull();
  });
});

describe('PricingService: unpriced models', () => {
  it('prices an unpriced model null (never 0), warns once per model, tells listeners on every call', () => {
    const p = pricing();
    const heard: string[] = [];
    p.unpricedListeners.push((m) => heard.push(m));
    expect(p.cost('acme-llm-1', usage(10, 0, 10))).toBeNull();
    expect(p.cost('acme-llm-1', usage(10, 0, 10))).toBeNull();
    expect(p.cost('acme-llm-2', usage(0, 0, 0))).toBeNull();
    expect(heard).toEqual(['acme-llm-1', 'acme-llm-1', 'acme-llm-2']);
    const lines = warn.mock.calls.map((c) => String(c[0]));
    expect(lines.filter((l) => l.includes('acme-llm-1'))).toHaveLength(1);
    expect(lines.filter((l) => l.includes('acme-llm-2'))).toHaveLength(1);
    expect(lines[0]).toMatch(/pricing\.models/);
  });
});
