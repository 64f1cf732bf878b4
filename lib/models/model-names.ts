/**
 * A dated snapshot: `gpt-4o-2024-08-06`, `o3-mini-2025-01-31`, `gpt-4-0613`, `gpt-3.5-turbo-0125`, or a
 * fine-tuned model (`ft:...`), whose name is fixed by construction.
 */
const SNAPSHOT = /(?:-\d{4}-\d{2}-\d{2}|-\d{4})$/;

/** True when `model` names a fixed model version rather than an alias that OpenAI may move. */
export function isPinnedModel(model: string): boolean {
  return model.startsWith('ft:') || SNAPSHOT.test(model);
}
