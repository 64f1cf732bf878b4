import { z } from 'zod';

/** A text part of multi-part message content. Other part types (images, audio, files) are refused. */
export const TextContentPartSchema = z.strictObject({ type: z.literal('text'), text: z.string() });

/** One chat message as the HTTP API accepts it. */
export const ChatMessageSchema = z.strictObject({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(TextContentPartSchema).min(1)]),
  name: z.string().min(1).max(64).optional(),
});

/**
 * Body of a chat route. Strict: unknown fields (`logprobs`, `logit_bias`, `n`, `tools`, ...) are refused
 * rather than forwarded. Extend it with `ChatRequestSchema.extend({...})` to accept more.
 */
export const ChatRequestSchema = z.strictObject({
  messages: z.array(ChatMessageSchema).min(1),
  model: z.string().min(1).max(128).optional(),
  max_tokens: z.number().int().positive().optional(),
  max_completion_tokens: z.number().int().positive().optional(),
  temperature: z.number().min(0).max(2).optional(),
  top_p: z.number().min(0).max(1).optional(),
  presence_penalty: z.number().min(-2).max(2).optional(),
  frequency_penalty: z.number().min(-2).max(2).optional(),
  seed: z.number().int().optional(),
  stop: z.union([z.string(), z.array(z.string()).max(4)]).optional(),
});

/** A validated chat body. */
export type ChatRequestBody = z.infer<typeof ChatRequestSchema>;
export type ChatMessageBody = z.infer<typeof ChatMessageSchema>;
