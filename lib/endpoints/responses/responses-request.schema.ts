import { z } from 'zod';

/** A text part of Responses input content. Other part types (images, files, audio) are refused. */
export const InputTextPartSchema = z.strictObject({ type: z.literal('input_text'), text: z.string() });

/** One input message as the HTTP API accepts it. */
export const ResponsesInputMessageSchema = z.strictObject({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(InputTextPartSchema).min(1)]),
});

/**
 * Body of a Responses route. Strict: unknown fields (`tools`, `previous_response_id`, `store`,
 * `include`, ...) are refused rather than forwarded. Extend it with `ResponsesRequestSchema.extend({...})`.
 */
export const ResponsesRequestSchema = z.strictObject({
  input: z.union([z.string().min(1), z.array(ResponsesInputMessageSchema).min(1)]),
  instructions: z.string().optional(),
  model: z.string().min(1).max(128).optional(),
  max_output_tokens: z.number().int().positive().optional(),
  temperature: z.number().min(0).max(2).optional(),
  top_p: z.number().min(0).max(1).optional(),
});

/** A validated Responses body. */
export type ResponsesRequestBody = z.infer<typeof ResponsesRequestSchema>;
