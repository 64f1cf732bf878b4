/**
 * The value of `key` in `memo`, made by `make` on a miss: a memo of pure results (escaped key parts,
 * label strings) bounded by `max` entries, emptied when full (the hot keys come back at once). `make`
 * should be a function made once, not a closure per call, on hot paths.
 */
export function memoized<V>(memo: Map<string, V>, key: string, max: number, make: (key: string) => V): V {
  let v = memo.get(key);
  if (v === undefined) {
    if (memo.size >= max) memo.clear();
    memo.set(key, (v = make(key)));
  }
  return v;
}
