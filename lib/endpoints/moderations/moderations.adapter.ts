import type OpenAI from 'openai';
import type { EndpointAdapter } from '../../call/endpoint-adapter.js';

const NO_USAGE = Object.freeze({
  prompt_tokens: 0,
  cached_tokens: 0,
  completion_tokens: 0,
  reasoning_tokens: 0,
  total_tokens: 0,
  estimated: false,
});

/** `POST /v1/moderations`: not metered (free; no hooks), no usage. */
export const moderationsAdapter: EndpointAdapter<OpenAI.ModerationCreateResponse> = {
  endpoint: 'moderations',
  metered: false,
  send: (client, body, model, a) =>
    client.moderations
      .create(
        { ...(body as unknown as OpenAI.ModerationCreateParams), model },
        { signal: a.signal, timeout: a.timeoutMs, maxRetries: 0 },
      )
      .withResponse(),
  usage: () => ({ ...NO_USAGE }),
  text: () => '',
};
