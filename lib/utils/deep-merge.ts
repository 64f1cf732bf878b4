function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object') return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * Merges plain objects recursively, later sources winning. Arrays (copied), functions and class
 * instances are replaced, not merged; `undefined` and `null` never overwrite a value (an option set to
 * `null` keeps its default). Prototype keys are ignored.
 */
export function deepMerge<T>(...sources: Array<Partial<T> | undefined>): T {
  const out: Record<string, unknown> = {};
  for (const src of sources) {
    if (!src) continue;
    for (const [key, value] of Object.entries(src)) {
      if (
        key === '__proto__' ||
        key === 'constructor' ||
        key === 'prototype' ||
        value === undefined ||
        value === null
      )
        continue;
      const prev = out[key];
      out[key] =
        isPlainObject(prev) && isPlainObject(value)
          ? deepMerge(prev, value)
          : isPlainObject(value)
            ? deepMerge(value)
            : Array.isArray(value)
              ? [...(value as unknown[])]
              : value;
    }
  }
  return out as T;
}
