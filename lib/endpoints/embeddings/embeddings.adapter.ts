import type OpenAI from 'openai';
import type { EndpointAdapter } from '../../call/endpoint-adapter.js';
import { normalizeChatUsage } from '../chat-completions/chat-completions.adapter.js';

/** `POST /v1/embeddings`: prompt tokens only; no output text. */
export const embeddingsAdapter: EndpointAdapter<OpenAI.CreateEmbeddingResponse> = {
  endpoint: 'embeddings',
  metered: true,
  send: (client, body, model, a) =>
    client.embeddings
      .create(
        { ...(body as unknown as OpenAI.EmbeddingCreateParams), model },
        { signal: a.signal, timeout: a.timeoutMs, maxRetries: 0 },
      )
      .withResponse(),
  usage: (res) =>
    res.usage && typeof res.usage.prompt_tokens === 'number' ? normalizeChatUsage(res.usage) : undefined,
  text: () => '',
};
