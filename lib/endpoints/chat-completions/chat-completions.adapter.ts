import type OpenAI from 'openai';
import { sseCompleted } from '../../client/sse-completion.js';
import {
  reportedServiceTier,
  type EndpointAdapter,
  type StreamAdapter,
} from '../../call/endpoint-adapter.js';
import type { NormalizedUsage } from '../../call/upstream-call.js';

type ChatParams = OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming;
type ChatCompletion = OpenAI.Chat.Completions.ChatCompletion;
type ChatCompletionChunk = OpenAI.Chat.Completions.ChatCompletionChunk;

/** Chat Completions usage (and embeddings usage, which has no completion part), normalized. */
export function normalizeChatUsage(
  u: OpenAI.CompletionUsage | OpenAI.CreateEmbeddingResponse.Usage,
): NormalizedUsage {
  const full = u as OpenAI.CompletionUsage;
  const prompt = u.prompt_tokens ?? 0;
  const completion = full.completion_tokens ?? 0;
  return {
    prompt_tokens: prompt,
    cached_tokens: full.prompt_tokens_details?.cached_tokens ?? 0,
    completion_tokens: completion,
    reasoning_tokens: full.completion_tokens_details?.reasoning_tokens ?? 0,
    total_tokens: u.total_tokens ?? prompt + completion,
    estimated: false,
  };
}

/** Every text a chat completion returned: each choice's content, refusal and tool-call arguments. */
function chatOutputText(c: ChatCompletion): string {
  const parts: string[] = [];
  for (const choice of c.choices ?? []) {
    const m = choice?.message;
    if (!m) continue;
    if (m.content) parts.push(m.content);
    if (m.refusal) parts.push(m.refusal);
    for (const t of m.tool_calls ?? [])
      if (t.type === 'function') parts.push(t.function.name, t.function.arguments);
  }
  return parts.join('\n');
}

const sdkOptions = (a: { signal?: AbortSignal; timeoutMs: number }) => ({
  signal: a.signal,
  timeout: a.timeoutMs,
  maxRetries: 0,
});

/** `POST /v1/chat/completions`. */
export const chatCompletionsAdapter: EndpointAdapter<ChatCompletion> = {
  endpoint: 'chat.completions',
  metered: true,
  send: (client, body, model, a) =>
    client.chat.completions
      .create({ ...(body as unknown as ChatParams), model, stream: false }, sdkOptions(a))
      .withResponse(),
  usage: (res) =>
    res.usage && typeof res.usage.prompt_tokens === 'number' ? normalizeChatUsage(res.usage) : undefined,
  text: chatOutputText,
  tier: (res) => reportedServiceTier(res.service_tier),
};

/** Streamed chat completions: usage always requested; a clean end is `data: [DONE]`, seen on the wire. */
export const chatCompletionsStreamAdapter: StreamAdapter<ChatCompletionChunk> = {
  endpoint: 'chat.completions',
  open: (client, body, model, a) =>
    client.chat.completions
      .create(
        {
          ...(body as unknown as ChatParams),
          model,
          stream: true,
          stream_options: { include_usage: true },
        },
        sdkOptions(a),
      )
      .withResponse(),
  delta: (chunk) => chunk.choices[0]?.delta?.content ?? undefined,
  read(chunk, p) {
    const choice = chunk.choices[0];
    if (choice?.delta?.content) p.text += choice.delta.content;
    if (choice?.finish_reason) p.finishReason = choice.finish_reason;
    if (chunk.usage) p.usage = normalizeChatUsage(chunk.usage);
    if (chunk.moderation?.output) p.moderation = chunk.moderation.output;
    p.serviceTier = reportedServiceTier(chunk.service_tier) ?? p.serviceTier;
  },
  // Strict: a reply the client's fetch did not watch (it said it was JSON) is not known to be complete.
  isComplete: (_p, response) => sseCompleted(response) === true,
};
