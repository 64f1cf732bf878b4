import { isRecord } from '../../utils/is-record.js';
import { DEFAULT_MODERATION_TRIGGERS, MODERATION_CATEGORIES } from '../fake-openai.options.js';
import { HttpError, randomAlnum, type RouteContext } from './route-helpers.js';

/** Categories whose score also reflects images (as `category_applied_input_types` reports them). */
const IMAGE_CATEGORIES = new Set<string>([
  'self-harm',
  'self-harm/intent',
  'self-harm/instructions',
  'sexual',
  'violence',
  'violence/graphic',
]);

/** One moderation result, as `POST /v1/moderations` reports it per input. */
export interface ModerationScore {
  flagged: boolean;
  categories: Record<string, boolean>;
  category_scores: Record<string, number>;
  category_applied_input_types: Record<string, string[]>;
}

/**
 * Scores one input (its texts, and whether it held an image) against the triggers: a trigger found as a
 * case-insensitive substring flags its categories (0.95, `true`); the rest score 0.0001, `false`.
 */
export function moderate(
  triggersOption: Record<string, readonly string[]> | undefined,
  texts: string[],
  image = false,
): ModerationScore {
  const triggers = Object.entries(triggersOption ?? DEFAULT_MODERATION_TRIGGERS);
  const haystack = texts.join('\n').toLowerCase();
  const hit = new Set<string>();
  for (const [trigger, cats] of triggers) {
    if (trigger && haystack.includes(trigger.toLowerCase())) cats.forEach((c) => hit.add(c));
  }
  const allCategories = [
    ...MODERATION_CATEGORIES,
    ...[...hit].filter((c) => !(MODERATION_CATEGORIES as readonly string[]).includes(c)),
  ];
  const categories: Record<string, boolean> = {};
  const scores: Record<string, number> = {};
  const applied: Record<string, string[]> = {};
  for (const c of allCategories) {
    categories[c] = hit.has(c);
    scores[c] = hit.has(c) ? 0.95 : 0.0001;
    applied[c] =
      image && IMAGE_CATEGORIES.has(c)
        ? texts.length
          ? ['text', 'image']
          : ['image']
        : texts.length
          ? ['text']
          : [];
  }
  return {
    flagged: hit.size > 0,
    categories,
    category_scores: scores,
    category_applied_input_types: applied,
  };
}

/** `POST /v1/moderations`. */
export function moderationsRoute(ctx: RouteContext, body: unknown): void {
  if (!isRecord(body) || body.input === undefined || body.input === null) {
    throw new HttpError(
      400,
      "Missing required parameter: 'input'.",
      'invalid_request_error',
      'input',
      'missing_required_parameter',
    );
  }
  const model = typeof body.model === 'string' && body.model ? body.model : 'omni-moderation-latest';
  const input = body.input;
  // Each entry: the texts of one result, and whether that input contained an image.
  let items: Array<{ texts: string[]; image: boolean }>;
  if (typeof input === 'string') {
    items = [{ texts: [input], image: false }];
  } else if (Array.isArray(input) && input.every((x) => typeof x === 'string')) {
    items = (input as string[]).map((s) => ({ texts: [s], image: false }));
  } else if (Array.isArray(input) && input.every(isRecord)) {
    // Multimodal form: the whole array is one input and gets one result.
    const parts = input as Record<string, unknown>[];
    items = [
      {
        texts: parts
          .filter((p) => p.type === 'text' && typeof p.text === 'string')
          .map((p) => p.text as string),
        image: parts.some((p) => p.type === 'image_url'),
      },
    ];
  } else {
    throw new HttpError(
      400,
      "Invalid type for 'input': expected a string, an array of strings, or an array of content parts.",
      'invalid_request_error',
      'input',
      'invalid_type',
    );
  }
  const results = items.map(({ texts, image }) => moderate(ctx.options.moderationTriggers, texts, image));
  ctx.ok({ id: `modr-${randomAlnum(24)}`, model, results }, model);
}

/** The `moderation` a chat or responses request asks for (`moderation: { model }`), or `undefined`. */
export function requestedModeration(body: Record<string, unknown>): { model: string } | undefined {
  const m = body.moderation;
  if (!isRecord(m)) return undefined;
  return { model: typeof m.model === 'string' && m.model ? m.model : 'omni-moderation-latest' };
}

/**
 * In-request moderation of `inputTexts` and `outputText` in the shape of each endpoint: chat completions report
 * `{ type: 'moderation_results', model, results: [...] }` per side, responses one `{ type: 'moderation_result', ... }`.
 * Under the `moderationError` fault both sides are `{ type: 'error', code, message }`.
 */
export function inRequestModeration(
  ctx: RouteContext,
  model: string,
  inputTexts: string[],
  outputText: string,
  shape: 'chat' | 'responses',
): { input: object; output: object } {
  const faulted = ctx.fault?.moderationError;
  if (faulted) {
    const detail = faulted === true ? {} : faulted;
    const error = {
      type: 'error',
      code: detail.code ?? 'moderation_unavailable',
      message: detail.message ?? 'Moderation could not be completed (fake fault).',
    };
    return { input: error, output: { ...error } };
  }
  const side = (texts: string[]): object => {
    const result = { ...moderate(ctx.options.moderationTriggers, texts), model, type: 'moderation_result' };
    return shape === 'chat' ? { type: 'moderation_results', model, results: [result] } : result;
  };
  return { input: side(inputTexts), output: side([outputText]) };
}
