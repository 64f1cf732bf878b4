import { encodeChat } from 'gpt-tokenizer/encoding/o200k_base';
import { describe, expect, it } from 'vitest';
import { countChatPromptTokens, countTextTokens } from './token-counter.js';

const exact = (messages: Array<{ role: string; content: string }>) =>
  encodeChat(messages as never, 'gpt-4o', { disallowedSpecial: new Set() }).length;

describe('countChatPromptTokens', () => {
  it('equals gpt-tokenizer’s chat encoding for every role and ordinary contents', () => {
    const texts = [
      '',
      'Hello world',
      ' leading space',
      'multi\nline\ntext',
      '<|endoftext|> special',
      'unicode ✓ 日本語',
      '  ',
      'x'.repeat(50),
    ];
    const roles = ['system', 'developer', 'user', 'assistant'];
    for (let i = 0; i < 200; i++) {
      const messages = Array.from({ length: 1 + (i % 5) }, (_, j) => ({
        role: roles[(i + j) % roles.length],
        content: `${texts[(i * 7 + j * 3) % texts.length]} ${i}`,
      }));
      expect(countChatPromptTokens(messages)).toBe(exact(messages));
    }
  });

  it('counts text parts joined by newlines, like a string content', () => {
    const parts = [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'part one' },
          { type: 'text', text: 'part two' },
        ],
      },
    ];
    expect(countChatPromptTokens(parts)).toBe(exact([{ role: 'user', content: 'part one\npart two' }]));
  });

  it('stays within a token a chunk of the exact count for a long run without whitespace, and never below it', () => {
    const run = 'ab'.repeat(1_000); // 2,000 characters, one pre-tokenized piece
    const counted = countTextTokens(run);
    const exactCount = exact([{ role: 'user', content: run }]) - exact([{ role: 'user', content: '' }]);
    expect(counted).toBeGreaterThanOrEqual(exactCount);
    expect(counted - exactCount).toBeLessThanOrEqual(Math.ceil(run.length / 128));
  });
});
