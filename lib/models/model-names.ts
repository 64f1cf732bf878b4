/**
 * A dated snapshot: `gpt-4o-2024-08-06`, `o3-mini-2025-01-31`, `gpt-4-0613`, `gpt-3.5-turbo-0125`, or a
 * fine-tuned model (`ft:...`), whose name is fixed by construction.
 */
const SNAPSHOT = /(?:-\d{4}-\d{2}-\d{2}|-\d{4})$/;

/** True when `model` names a fixed model version rather than an alias that OpenAI may move. */
export function isPinnedModel(model: string): boolean {
  return model.startsWith('ft:') || SNAPSHOT.test(model);
}

/**
 * The models the options name (default, fallbacks, alias targets, moderation, embedding), through the
 * aliases, once each: those whose shared state (breaker, pacing) an instance reads at boot.
 */
export function configuredModels(models: {
  default: string;
  fallbacks: readonly string[];
  aliases: Readonly<Record<string, string>>;
  moderation?: string;
  embedding?: string;
}): Set<string> {
  const names = [models.default, ...models.fallbacks, ...Object.values(models.aliases)];
  if (models.moderation) names.push(models.moderation);
  if (models.embedding) names.push(models.embedding);
  return new Set(names.filter(Boolean).map((n) => models.aliases[n] ?? n));
}

/**
 * Most models an instance keeps a breaker or pacing view of. Callers may name models freely
 * (`models.requested: 'any'`): each name must not add, for good, a view every periodic re-sync reads.
 */
export const MAX_MODEL_VIEWS = 1_000;

/**
 * Makes room in `views` for one more model: below `MAX_MODEL_VIEWS` there is room; at it, the oldest view
 * that `evictable` lets go (among the first few) is dropped. False when none may go: keep no view of the
 * new model then (its state stays in the store, read when needed).
 */
export function roomForView<V>(
  views: Map<string, V>,
  evictable: (model: string, view: V) => boolean,
): boolean {
  if (views.size < MAX_MODEL_VIEWS) return true;
  let looked = 0;
  for (const [model, view] of views) {
    if (evictable(model, view)) {
      views.delete(model);
      return true;
    }
    if (++looked >= 32) break;
  }
  return false;
}
