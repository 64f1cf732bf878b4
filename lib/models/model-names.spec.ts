import { describe, expect, it } from 'vitest';
import { isPinnedModel } from './model-names.js';

describe('isPinnedModel', () => {
  it.each([
    'gpt-4o-2024-08-06',
    'gpt-4o-mini-2024-07-18',
    'o3-mini-2025-01-31',
    'gpt-4.1-2025-04-14',
    'gpt-4-0613',
    'gpt-3.5-turbo-0125',
    'ft:gpt-4o-mini-2024-07-18:acme::abc123',
    'ft:gpt-3.5-turbo:my-org:custom_suffix:id',
  ])('%s is pinned', (model) => {
    expect(isPinnedModel(model)).toBe(true);
  });

  it.each([
    'gpt-4o',
    'gpt-4o-mini',
    'o3-mini',
    'gpt-4.1',
    'chatgpt-4o-latest',
    'gpt-4-turbo',
    'gpt-4o-2024-08', // incomplete date
    'gpt-4o-2024-08-06-preview', // a suffix after the date
    'gpt-4o-123', // three digits is no snapshot
    '2024-08-06', // a date alone names no model
    '',
  ])('%j is not pinned', (model) => {
    expect(isPinnedModel(model)).toBe(false);
  });
});
