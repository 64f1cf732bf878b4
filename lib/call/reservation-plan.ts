import { consumeAll, adjustAll } from '../storage/multi-key.js';
import type {
  AdjustManyResult,
  AdjustOp,
  ConsumeOp,
  ConsumeResult,
  OpenAIStore,
} from '../storage/openai-store.interface.js';
import { StoreDegradedError } from '../storage/resilient.store.js';
import { StorageUnavailableException } from '../throttling/rate-limit.exceptions.js';
import type { CallReservation, SettledCall, UpstreamCall } from './upstream-call.js';

/**
 * What a hook holds on the shared store before a call, said as store operations so that the call
 * pipeline runs the holds of every such hook (token limits, budgets) as **one** atomic store operation:
 * one Lua script and one round trip on Redis (`OpenAIStore.consumeMany`), then settles them as one
 * write (`adjustMany`). @internal
 */
export interface HoldPlan {
  /** The consumes this hook needs (may be empty: a hold made elsewhere, e.g. on a project lease). */
  ops: ConsumeOp[];
  /** Every op of every hook was admitted: this hook's hold, from its ops' results (in order). */
  admitted(results: ConsumeResult[]): PlannedHold;
  /**
   * This hook's op `index` refused (nothing was counted anywhere): the exception to throw (it may set
   * response headers and count the refusal).
   */
  refusal(index: number, result: ConsumeResult): Error;
  /** The holds were not taken (a refusal, the store failing): undo what the plan did outside `ops`. */
  abort?(): void;
}

/** A hook's admitted hold: the adjusts that end it, issued with the other hooks' as one write. */
export interface PlannedHold {
  /** The adjusts that settle the hold to the call's real usage or cost. */
  settle(result: SettledCall): AdjustOp[];
  /** The adjusts that give the hold back. */
  release(): AdjustOp[];
  /** After the settlement's write: the counts of its ops (in order), e.g. for budget alerts. */
  settled?(counts: AdjustManyResult): void;
}

/** A hook whose store work joins the call's one reservation operation. @internal */
export interface PlannedHook {
  plan(call: UpstreamCall): Promise<HoldPlan | undefined> | HoldPlan | undefined;
}

export function isPlannedHook(hook: unknown): hook is PlannedHook {
  return typeof (hook as Partial<PlannedHook>)?.plan === 'function';
}

/**
 * Takes the holds of `plans` as one store operation and returns them as one reservation, settled or
 * released as one write (issued at once, so a later read of the store sees it).
 * @throws the refusing hook's exception (first in order); StorageUnavailableException (503) when the
 * store fails under `fail-closed`.
 */
export async function holdAll(
  store: OpenAIStore,
  plans: ReadonlyArray<HoldPlan | undefined>,
): Promise<CallReservation | undefined> {
  const live = plans.filter((p): p is HoldPlan => p !== undefined);
  if (live.length === 0) return undefined;
  const ops = live.flatMap((p) => p.ops);
  let outcome;
  try {
    outcome = await consumeAll(store, ops);
  } catch (err) {
    for (const p of live) p.abort?.();
    if (err instanceof StoreDegradedError) throw new StorageUnavailableException(err);
    throw err;
  }
  if (!outcome.allowed) {
    for (const p of live) p.abort?.();
    // `refused` is optional in a (custom) store's answer: else the first op with a `blockedBy`, else the
    // first not allowed, else the first. A refusal is always thrown: it never becomes a hold.
    let refused = outcome.refused;
    if (refused === undefined || !(refused >= 0 && refused < ops.length)) {
      refused = outcome.results.findIndex((r) => r?.blockedBy !== undefined);
      if (refused < 0)
        refused = Math.max(
          0,
          outcome.results.findIndex((r) => !r?.allowed),
        );
    }
    const r = outcome.results[refused] ?? { allowed: false, windows: [] };
    const blockedBy = r.blockedBy ?? r.windows.find((w) => w.remaining <= 0) ?? r.windows[0];
    const result = blockedBy ? { ...r, blockedBy } : r;
    let at = refused;
    for (const p of live) {
      if (at < p.ops.length) throw p.refusal(at, result);
      at -= p.ops.length;
    }
  }
  let at = 0;
  const holds = live.map((p) => {
    const results = outcome.results.slice(at, at + p.ops.length);
    at += p.ops.length;
    return p.admitted(results);
  });
  let done = false;
  const end = async (opsOf: (h: PlannedHold) => AdjustOp[], after: boolean) => {
    if (done) return;
    done = true;
    const per = holds.map(opsOf);
    const all = per.flat();
    if (all.length === 0) {
      if (after) for (const h of holds) h.settled?.([]);
      return;
    }
    const counts = await adjustAll(store, all);
    if (!after) return;
    let i = 0;
    holds.forEach((h, j) => {
      const mine = counts.slice(i, i + per[j].length);
      i += per[j].length;
      h.settled?.(mine);
    });
  };
  return {
    settle: (result: SettledCall) => end((h) => h.settle(result), true),
    release: () => end((h) => h.release(), false),
  };
}

/** One hook's plan run alone (its `reserve`, outside the pipeline's joint reservation). */
export async function holdOne(
  store: OpenAIStore,
  plan: HoldPlan | undefined,
): Promise<CallReservation | undefined> {
  return holdAll(store, [plan]);
}
