import type OpenAI from 'openai';
import type { EndpointAdapter } from '../../call/endpoint-adapter.js';
import { ZERO_USAGE } from '../../call/upstream-call.js';

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
  usage: () => ({ ...ZERO_USAGE }),
  text: () => '',
};
