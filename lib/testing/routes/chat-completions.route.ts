import { decode, encode } from 'gpt-tokenizer/encoding/o200k_base';
import { countChatPromptTokens, messageText, type CountableChatMessage } from '../../tokens/token-counter.js';
import { isRecord } from '../../utils/is-record.js';
import type { FakeChatRequest } from '../fake-openai.options.js';
import {
  ENCODE_OPTIONS,
  HttpError,
  isPositiveInt,
  randomAlnum,
  requireModel,
  streamPieces,
  type RouteContext,
} from './route-helpers.js';

/** Default {@link FakeOpenAIServerOptions.reply}: `` `Echo: ${text of the last user message}` ``. */
export function defaultReply(req: FakeChatRequest): string {
  for (let i = req.messages.length - 1; i >= 0; i--) {
    const m = req.messages[i];
    if (isRecord(m) && m.role === 'user') return `Echo: ${messageText(m.content)}`;
  }
  return 'Echo: ';
}

interface ChunkCommon {
  id: string;
  created: number;
  model: string;
  service_tier: string;
  system_fingerprint: string;
}

/** `POST /v1/chat/completions`, JSON or SSE. */
export async function chatCompletionsRoute(ctx: RouteContext, body: unknown): Promise<void> {
  if (!isRecord(body)) throw new HttpError(400, 'The request body must be a JSON object.');
  const model = requireModel(body);
  if (!Array.isArray(body.messages)) {
    throw new HttpError(
      400,
      "Missing required parameter: 'messages'.",
      'invalid_request_error',
      'messages',
      'missing_required_parameter',
    );
  }
  if (body.messages.length === 0) {
    throw new HttpError(
      400,
      "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
      'invalid_request_error',
      'messages',
      'empty_array',
    );
  }
  for (const param of ['max_tokens', 'max_completion_tokens'] as const) {
    if (body[param] !== undefined && body[param] !== null && !isPositiveInt(body[param])) {
      throw new HttpError(
        400,
        `Invalid '${param}': must be an integer >= 1.`,
        'invalid_request_error',
        param,
        'integer_below_min_value',
      );
    }
  }
  const { options } = ctx;
  const messages = body.messages as unknown[];
  const limitRaw = body.max_completion_tokens ?? body.max_tokens;
  const limit = isPositiveInt(limitRaw) ? limitRaw : undefined;
  const chatReq: FakeChatRequest = {
    model,
    messages,
    body,
    ...(limit !== undefined ? { max_tokens: limit } : {}),
  };

  const fullReply = (options.reply ?? defaultReply)(chatReq);
  if (typeof fullReply !== 'string') throw new Error('reply() must return a string');

  const promptTokens = countChatPromptTokens(messages as CountableChatMessage[]);
  const reasoningTokens = Math.max(0, Math.floor(options.reasoningTokens ?? 0));
  const replyTokens = encode(fullReply, ENCODE_OPTIONS);
  let content = fullReply;
  let visibleTokens = replyTokens.length;
  let finishReason: 'stop' | 'length' = 'stop';
  if (limit !== undefined) {
    const visibleLimit = Math.max(0, limit - reasoningTokens);
    if (replyTokens.length > visibleLimit || reasoningTokens >= limit) {
      content = decode(replyTokens.slice(0, visibleLimit));
      visibleTokens = Math.min(replyTokens.length, visibleLimit);
      finishReason = 'length';
    }
  }
  const cachedRaw =
    typeof options.cachedTokens === 'function'
      ? options.cachedTokens({ ...chatReq, promptTokens })
      : (options.cachedTokens ?? 0);
  const cachedTokens = Math.min(promptTokens, Math.max(0, Math.floor(Number(cachedRaw) || 0)));
  const completionTokens = visibleTokens + reasoningTokens;
  const usage = {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedTokens, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: reasoningTokens,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
  const common: ChunkCommon = {
    id: `chatcmpl-${randomAlnum(29)}`,
    created: Math.floor(Date.now() / 1000),
    model,
    service_tier: 'default',
    system_fingerprint: 'fp_fakeopenai',
  };

  if (ctx.record.stream) {
    const streamOptions = isRecord(body.stream_options) ? body.stream_options : {};
    await streamChat(
      ctx,
      common,
      content,
      finishReason,
      streamOptions.include_usage === true && !ctx.fault?.omitUsage ? usage : undefined,
    );
    return;
  }
  ctx.ok(
    {
      ...common,
      object: 'chat.completion',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content, refusal: null, annotations: [] },
          logprobs: null,
          finish_reason: finishReason,
        },
      ],
      usage,
    },
    model,
  );
}

async function streamChat(
  ctx: RouteContext,
  common: ChunkCommon,
  content: string,
  finishReason: 'stop' | 'length',
  usage: object | undefined,
): Promise<void> {
  const { fault } = ctx;
  const sse = ctx.openStream(common.model);
  const chunk = (choices: unknown[], extra: object = {}): string =>
    JSON.stringify({
      ...common,
      object: 'chat.completion.chunk',
      choices,
      ...(usage ? { usage: null } : {}),
      ...extra,
    });
  const choice = (delta: object, finish: string | null): object => ({
    index: 0,
    delta,
    logprobs: null,
    finish_reason: finish,
  });

  if (!(await sse.send(chunk([choice({ role: 'assistant', content: '', refusal: null }, null)])))) return;
  const cutAfter = fault?.streamCutAfterChunks;
  const stallAfter = fault?.streamStallAfterChunks;
  const pieces = streamPieces(content);
  const stopAfter = cutAfter ?? stallAfter;
  const count = stopAfter === undefined ? pieces.length : Math.min(Math.max(0, stopAfter), pieces.length);
  for (let i = 0; i < count; i++) {
    if (!(await sse.send(chunk([choice({ content: pieces[i] }, null)])))) return;
  }
  if (cutAfter !== undefined) {
    sse.destroy();
    return;
  }
  if (stallAfter !== undefined) return; // the socket stays open until the client gives up or close()
  if (!(await sse.send(chunk([choice({}, finishReason)])))) return;
  if (usage && !(await sse.send(chunk([], { usage })))) return;
  if (!fault?.omitDone && !(await sse.send('[DONE]'))) return;
  sse.end();
}
