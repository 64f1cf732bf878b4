import type OpenAI from 'openai';
import {
  UpstreamStreamError,
  reportedServiceTier,
  type EndpointAdapter,
  type StreamAdapter,
} from '../../call/endpoint-adapter.js';
import type { NormalizedUsage } from '../../call/upstream-call.js';
import type { CountableChatMessage } from '../../tokens/token-counter.js';

type Response = OpenAI.Responses.Response;
type ResponseStreamEvent = OpenAI.Responses.ResponseStreamEvent;
type ResponseParams = OpenAI.Responses.ResponseCreateParamsNonStreaming;

/** Responses API usage, normalized: `input_tokens` as prompt, `output_tokens` as completion tokens. */
export function normalizeResponseUsage(u: OpenAI.Responses.ResponseUsage): NormalizedUsage {
  const prompt = u.input_tokens ?? 0;
  const completion = u.output_tokens ?? 0;
  return {
    prompt_tokens: prompt,
    cached_tokens: u.input_tokens_details?.cached_tokens ?? 0,
    completion_tokens: completion,
    reasoning_tokens: u.output_tokens_details?.reasoning_tokens ?? 0,
    total_tokens: u.total_tokens ?? prompt + completion,
    estimated: false,
  };
}

/** The text a response returned: its `output_text` parts, refusals and function-call arguments. */
export function responseOutputText(r: Response): string {
  const parts: string[] = [];
  for (const item of r.output ?? []) {
    if (item.type === 'message') {
      for (const c of item.content ?? []) {
        if (c.type === 'output_text') parts.push(c.text);
        else if (c.type === 'refusal') parts.push(c.refusal);
      }
    } else if (item.type === 'function_call') {
      parts.push(item.name, item.arguments);
    }
  }
  return parts.join('');
}

/**
 * A Responses body's `instructions` and `input` as chat-like messages, for input caps, the prompt-token
 * estimate and moderation: `instructions` as a `developer` message, a string `input` as one `user`
 * message, each input message with its role (content strings, or `input_text` / `output_text` parts).
 */
export function responsesInputMessages(body: {
  input?: unknown;
  instructions?: unknown;
}): CountableChatMessage[] {
  const out: CountableChatMessage[] = [];
  if (typeof body.instructions === 'string' && body.instructions)
    out.push({ role: 'developer', content: body.instructions });
  if (typeof body.input === 'string') out.push({ role: 'user', content: body.input });
  else if (Array.isArray(body.input)) {
    for (const item of body.input as unknown[]) {
      if (!item || typeof item !== 'object') continue;
      const m = item as { role?: unknown; content?: unknown; type?: unknown };
      if (m.type !== undefined && m.type !== 'message') continue;
      out.push({
        role: typeof m.role === 'string' ? m.role : 'user',
        content: typeof m.content === 'string' || Array.isArray(m.content) ? (m.content as string) : '',
      });
    }
  }
  return out;
}

const sdkOptions = (a: { signal?: AbortSignal; timeoutMs: number }) => ({
  signal: a.signal,
  timeout: a.timeoutMs,
  maxRetries: 0,
});

/** `POST /v1/responses`. */
export const responsesAdapter: EndpointAdapter<Response> = {
  endpoint: 'responses',
  metered: true,
  send: (client, body, model, a) =>
    client.responses
      .create({ ...(body as unknown as ResponseParams), model, stream: false }, sdkOptions(a))
      .withResponse(),
  usage: (res) =>
    res.usage && typeof res.usage.input_tokens === 'number' ? normalizeResponseUsage(res.usage) : undefined,
  text: responseOutputText,
  tier: (res) => reportedServiceTier(res.service_tier),
};

/**
 * Streamed responses: typed events; a clean end is `response.completed` (Responses streams send no
 * `[DONE]`); `response.failed`, `response.incomplete` and an `error` event end the stream in failure,
 * accounted from what was received (their usage when they carry one).
 */
export const responsesStreamAdapter: StreamAdapter<ResponseStreamEvent> = {
  endpoint: 'responses',
  open: (client, body, model, a) =>
    client.responses
      .create({ ...(body as unknown as ResponseParams), model, stream: true }, sdkOptions(a))
      .withResponse(),
  delta: (e) => (e.type === 'response.output_text.delta' ? e.delta : undefined),
  read(e, p) {
    switch (e.type) {
      case 'response.output_text.delta':
        p.text += e.delta;
        break;
      case 'response.completed':
        p.completed = true;
        p.finishReason = 'completed';
        if (e.response.moderation?.output) p.moderation = e.response.moderation.output;
        p.serviceTier = reportedServiceTier(e.response.service_tier) ?? p.serviceTier;
        if (e.response.usage) p.usage = normalizeResponseUsage(e.response.usage);
        break;
      case 'response.incomplete':
        p.finishReason = 'incomplete';
        if (e.response.usage) p.usage = normalizeResponseUsage(e.response.usage);
        p.failure = new UpstreamStreamError(
          'incomplete',
          `response incomplete (${e.response.incomplete_details?.reason ?? 'unknown reason'})`,
        );
        break;
      case 'response.failed':
        p.finishReason = 'failed';
        if (e.response.usage) p.usage = normalizeResponseUsage(e.response.usage);
        p.failure = new UpstreamStreamError(
          'failed',
          `response failed (${e.response.error?.code ?? 'unknown'})`,
          e.response.error?.code ?? undefined,
        );
        break;
      case 'error':
        p.failure = new UpstreamStreamError(
          'error',
          `stream error event (${e.code ?? 'unknown'})`,
          e.code ?? undefined,
        );
        break;
      default:
        break;
    }
  },
  isComplete: (p) => p.completed,
};
