import { describe, expect, it } from 'vitest';
import { deepMerge } from './deep-merge.js';

type Any = Record<string, any>;

describe('deepMerge', () => {
  it('merges nested plain objects, later sources winning', () => {
    const out = deepMerge<Any>({ a: 1, n: { x: 1, y: 2 } }, { n: { y: 3, z: 4 } }, { b: 2 });
    expect(out).toEqual({ a: 1, b: 2, n: { x: 1, y: 3, z: 4 } });
  });

  it('replaces arrays instead of merging them', () => {
    const out = deepMerge<Any>({ list: ['a', 'b', 'c'] }, { list: ['z'] });
    expect(out.list).toEqual(['z']);
  });

  it('lets an empty array replace a non-empty one', () => {
    expect(deepMerge<Any>({ list: ['a'] }, { list: [] }).list).toEqual([]);
  });

  it('never lets undefined or null overwrite a value (an option set to null keeps its default)', () => {
    const out = deepMerge<Any>({ a: 1, b: 2, c: { d: 1 } }, { a: undefined, b: null, c: null });
    expect(out).toEqual({ a: 1, b: 2, c: { d: 1 } });
  });

  it('copies arrays, so a merged result never shares an array with its sources', () => {
    const src = { list: [1, 2] };
    const out = deepMerge<Any>(src);
    out.list.push(3);
    expect(src.list).toEqual([1, 2]);
  });

  it('skips undefined sources', () => {
    expect(deepMerge<Any>(undefined, { a: 1 }, undefined)).toEqual({ a: 1 });
  });

  it('replaces functions and class instances rather than merging into them', () => {
    const fn = async () => 'k';
    const date = new Date(0);
    const out = deepMerge<Any>({ key: 'plain', when: { y: 1 } }, { key: fn, when: date });
    expect(out.key).toBe(fn);
    expect(out.when).toBe(date);
  });

  it('does not mutate its sources (nested objects are copies)', () => {
    const a = { n: { x: 1 } };
    const b = { n: { y: 2 } };
    const out = deepMerge<Any>(a, b);
    out.n.x = 99;
    expect(a).toEqual({ n: { x: 1 } });
    expect(b).toEqual({ n: { y: 2 } });
  });

  it('a plain object replaces a scalar and a scalar replaces an object', () => {
    expect(deepMerge<Any>({ a: 1 }, { a: { b: 2 } })).toEqual({ a: { b: 2 } });
    expect(deepMerge<Any>({ a: { b: 2 } }, { a: 3 })).toEqual({ a: 3 });
  });

  it('ignores __proto__, constructor and prototype keys (no prototype pollution)', () => {
    const evil = JSON.parse(
      '{"__proto__": {"polluted": true}, "constructor": {"prototype": {"polluted": true}}, "nested": {"__proto__": {"polluted": true}}, "ok": 1}',
    );
    const out = deepMerge<Any>({}, evil);
    expect(out.ok).toBe(1);
    expect(({} as Any).polluted).toBeUndefined();
    expect(out.polluted).toBeUndefined();
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(out.nested.polluted).toBeUndefined();
    expect(Object.keys(out.nested)).toEqual([]);
    expect(Object.hasOwn(out, 'constructor')).toBe(false);
  });

  it('merges objects with a null prototype', () => {
    const a = Object.assign(Object.create(null), { x: { y: 1 } });
    expect(deepMerge<Any>(a, { x: { z: 2 } })).toEqual({ x: { y: 1, z: 2 } });
  });
});
