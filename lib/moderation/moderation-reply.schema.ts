import { z } from 'zod';

/** One result of `POST /v1/moderations`: OpenAI's verdict, the per-category verdicts and scores (0..1). */
const ModerationResultSchema = z
  .object({
    flagged: z.boolean(),
    categories: z.record(z.string(), z.boolean().nullable()),
    category_scores: z.record(z.string(), z.number()),
  })
  // A result that judged no category, or a verdict without its score, checked nothing: never clean.
  .refine((r) => Object.keys(r.categories).length > 0, { message: 'no categories', path: ['categories'] })
  .refine((r) => Object.keys(r.categories).every((c) => typeof r.category_scores[c] === 'number'), {
    message: 'a category without its score',
    path: ['category_scores'],
  });

/** The part of a moderations reply the library reads: `results`, one per input, each well formed. */
const ModerationReplySchema = z.object({ results: z.array(ModerationResultSchema) });

/** A validated moderation result. */
export type ModerationResultShape = z.infer<typeof ModerationResultSchema>;

/**
 * Validates a moderations reply for `inputs` inputs (the schema is compiled once, at import). Anything
 * but exactly one well-formed result per input is a failure: a missing `flagged` or `categories` must
 * never read as clean.
 * @returns the results, or a short description of what is wrong (no reply text).
 */
export function validateModerationReply(
  reply: unknown,
  inputs: number,
): { ok: true; results: ModerationResultShape[] } | { ok: false; problem: string } {
  const parsed = ModerationReplySchema.safeParse(reply);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    return {
      ok: false,
      problem: `malformed moderation reply (${first ? `${first.path.join('.') || 'body'}: ${first.code}` : 'invalid'})`,
    };
  }
  if (parsed.data.results.length !== inputs) {
    return {
      ok: false,
      problem: `moderation reply has ${parsed.data.results.length} results for ${inputs} inputs`,
    };
  }
  return { ok: true, results: parsed.data.results };
}
