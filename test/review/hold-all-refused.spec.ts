import { describe, expect, it } from 'vitest';
import { holdAll, type HoldPlan } from '../../lib/call/reservation-plan.js';
import { MemoryStore } from '../../lib/storage/memory.store.js';
import type { ConsumeManyResult, ConsumeOp, OpenAIStore } from '../../lib/storage/openai-store.interface.js';

/** A custom store whose consumeMany reports a refusal without `refused` (the field is optional). */
class NoIndexStore extends MemoryStore {
  override async consumeMany(ops: readonly ConsumeOp[]): Promise<ConsumeManyResult> {
    const r = await super.consumeMany(ops);
    delete r.refused;
    return r;
  }
}

const plan = (key: string, limit: number, cost: number): HoldPlan => ({
  ops: [{ key, windows: [{ name: 'w', limit, windowMs: 60_000 }], cost }],
  admitted: () => ({ settle: () => [], release: () => [] }),
  refusal: () => new Error(`refused by ${key}`),
});

describe('holdAll with a store that reports a refusal without its index', () => {
  it("throws the refusing plan's exception: a refused consume never becomes a hold", async () => {
    const store: OpenAIStore = new NoIndexStore();
    await expect(holdAll(store, [plan('a', 10, 5), plan('b', 10, 11)])).rejects.toThrow('refused by b');
    await expect(holdAll(store, [plan('c', 10, 11), plan('d', 10, 5)])).rejects.toThrow('refused by c');
  });
});
