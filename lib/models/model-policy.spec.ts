import { describe, expect, it } from 'vitest';
import { ModelNotAllowedException } from '../errors/openai-http.exceptions.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { ModelPolicy } from './model-policy.js';

const models = (over: Partial<ResolvedOpenAIOptions['models']> = {}): ResolvedOpenAIOptions['models'] => ({
  default: 'chat',
  aliases: { chat: 'gpt-4o-2024-08-06', mini: 'gpt-4o-mini-2024-07-18' },
  pinning: 'enforce',
  requested: 'configured',
  fallbacks: ['o3-mini-2025-01-31'],
  moderation: 'omni-moderation-latest',
  embedding: 'text-embedding-3-small',
  ...over,
});

describe('ModelPolicy: models a call may name', () => {
  it("requested 'configured': the default, alias and fallback targets pass; any other snapshot is a 400", () => {
    const p = new ModelPolicy(models());
    expect(p.resolve()).toBe('gpt-4o-2024-08-06');
    expect(p.resolve('mini')).toBe('gpt-4o-mini-2024-07-18');
    expect(p.resolve('gpt-4o-mini-2024-07-18')).toBe('gpt-4o-mini-2024-07-18');
    expect(p.resolve('o3-mini-2025-01-31')).toBe('o3-mini-2025-01-31');
    expect(() => p.resolve('o1-pro-2025-03-19')).toThrow(ModelNotAllowedException);
    expect(() => p.resolve('gpt-4o-2099-01-01')).toThrow(/not one of the configured models/);
  });

  it("requested 'any': a pinned snapshot passes; pinning still refuses an unpinned name", () => {
    const p = new ModelPolicy(models({ requested: 'any' }));
    expect(p.resolve('o1-pro-2025-03-19')).toBe('o1-pro-2025-03-19');
    expect(() => p.resolve('gpt-4o')).toThrow(/not a pinned snapshot/);
  });

  it('an allow-list decides instead of requested', () => {
    const p = new ModelPolicy(models({ allow: ['o1-pro-2025-03-19', 'gpt-4o-2024-08-06'] }));
    expect(p.resolve('o1-pro-2025-03-19')).toBe('o1-pro-2025-03-19');
    expect(() => p.resolve('mini')).toThrow(/not allowed here/);
  });
});
