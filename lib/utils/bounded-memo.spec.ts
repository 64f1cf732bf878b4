import { describe, expect, it } from 'vitest';
import { memoized } from './bounded-memo.js';

describe('memoized', () => {
  it('makes a value once per key and holds at most max entries', () => {
    const memo = new Map<string, string>();
    const made: string[] = [];
    const make = (k: string) => (made.push(k), k.toUpperCase());
    expect(memoized(memo, 'a', 2, make)).toBe('A');
    expect(memoized(memo, 'a', 2, make)).toBe('A');
    expect(memoized(memo, 'b', 2, make)).toBe('B');
    expect(made).toEqual(['a', 'b']);
    // full: emptied, then the new key held alone
    expect(memoized(memo, 'c', 2, make)).toBe('C');
    expect([...memo.keys()]).toEqual(['c']);
    expect(memoized(memo, 'a', 2, make)).toBe('A');
    expect(made).toEqual(['a', 'b', 'c', 'a']);
  });
});
