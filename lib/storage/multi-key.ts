import type {
  AdjustManyResult,
  AdjustOp,
  ConsumeManyResult,
  ConsumeOp,
  OpenAIStore,
} from './openai-store.interface.js';

/**
 * One `consume` per op, all at once, then the admitted ones given back (`adjust` by `-cost`) when one
 * refuses or fails: the same outcome as an atomic `consumeMany`, for stores (or Redis Cluster slots) that
 * cannot run it as one operation. A failure (the store down under `fail-closed`) is rethrown after the
 * give-back.
 */
export async function consumeEach(store: OpenAIStore, ops: readonly ConsumeOp[]): Promise<ConsumeManyResult> {
  const outcomes = await Promise.allSettled(ops.map((op) => store.consume(op.key, op.windows, op.cost)));
  let failed: PromiseRejectedResult | undefined;
  let refused = -1;
  let degraded = false;
  outcomes.forEach((o, i) => {
    if (o.status === 'rejected') failed ??= o;
    else {
      if (!o.value.allowed && refused < 0) refused = i;
      if (o.value.degraded) degraded = true;
    }
  });
  if (!failed && refused < 0) {
    const results = outcomes.map((o) => (o as PromiseFulfilledResult<ConsumeManyResult['results'][0]>).value);
    return { allowed: true, results, ...(degraded ? { degraded } : {}) };
  }
  await Promise.all(
    outcomes.map(async (o, i) => {
      if (o.status !== 'fulfilled' || !o.value.allowed || ops[i].cost === 0) return;
      const refs = o.value.windows.map((w) => ({ name: w.name, start: w.start }));
      await store.adjust(ops[i].key, refs, -ops[i].cost).catch(() => undefined);
    }),
  );
  if (failed) throw failed.reason;
  const results = outcomes.map((o) => {
    const r = (o as PromiseFulfilledResult<ConsumeManyResult['results'][0]>).value;
    return { ...r, allowed: false };
  });
  return { allowed: false, results, refused, ...(degraded ? { degraded } : {}) };
}

/**
 * Several consumes as one atomic operation: the store's own `consumeMany` (one round trip on Redis), else
 * `consumeEach`. See `OpenAIStore.consumeMany`.
 */
export function consumeAll(store: OpenAIStore, ops: readonly ConsumeOp[]): Promise<ConsumeManyResult> {
  if (ops.length === 0) return Promise.resolve({ allowed: true, results: [] });
  if (ops.length === 1 || !store.consumeMany) {
    if (ops.length > 1) return consumeEach(store, ops);
    return store
      .consume(ops[0].key, ops[0].windows, ops[0].cost)
      .then((r) =>
        r.allowed
          ? { allowed: true, results: [r], ...(r.degraded ? { degraded: true } : {}) }
          : { allowed: false, results: [r], refused: 0, ...(r.degraded ? { degraded: true } : {}) },
      );
  }
  return store.consumeMany(ops);
}

/**
 * Several adjusts as one operation: the store's own `adjustMany` (one round trip on Redis, counts
 * returned), else one `adjust` per op (no counts). Ops with `delta` 0 and no `read` are skipped.
 */
export async function adjustAll(store: OpenAIStore, ops: readonly AdjustOp[]): Promise<AdjustManyResult> {
  const live = ops.filter((op) => op.delta !== 0 || op.read);
  if (live.length === 0) return ops.map((op) => op.windows.map(() => undefined));
  if (store.adjustMany) {
    const counts = await store.adjustMany(live);
    let j = 0;
    return ops.map((op) => (op.delta !== 0 || op.read ? counts[j++] : op.windows.map(() => undefined)));
  }
  await Promise.all(
    live.filter((op) => op.delta !== 0).map((op) => store.adjust(op.key, op.windows, op.delta)),
  );
  return ops.map((op) => op.windows.map(() => undefined));
}
