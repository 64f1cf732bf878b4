import { decode, encode } from 'gpt-tokenizer/encoding/o200k_base';
import {
  countChatPromptTokens,
  countTextTokens,
  messageText,
  type CountableChatMessage,
} from '../../tokens/token-counter.js';
import { isRecord } from '../../utils/is-record.js';
import type { FakeChatRequest } from '../fake-openai.options.js';
import { inRequestModeration, requestedModeration } from './moderations.route.js';
import {
  reportedTier,
  ENCODE_OPTIONS,
  generateText,
  HttpError,
  isPositiveInt,
  minimalInstance,
  randomAlnum,
  replyModel,
  requireModel,
  streamErrorOf,
  streamPieces,
  streamStop,
  type RouteContext,
} from './route-helpers.js';

/**
 * Default {@link FakeOpenAIServerOptions.reply}: `` `Echo: ${text of the last user message}` `` (for responses, of the
 * last user input).
 */
export function defaultReply(req: FakeChatRequest): string {
  for (let i = req.messages.length - 1; i >= 0; i--) {
    const m = req.messages[i];
    if (isRecord(m) && m.role === 'user') return `Echo: ${messageText(m.content)}`;
  }
  return 'Echo: ';
}

/**
 * The text a chat request's last user message contains to get a tool call back. In full: when the request has
 * function `tools` and `tool_choice` is not `'none'`, the reply is a tool call (`finish_reason: 'tool_calls'`,
 * `content: null`) if `tool_choice` names a function (that one is called), is `'required'`, or the last message is
 * a user message containing `CALL_TOOL` (`CALL_TOOL:<name>` picks the tool, otherwise the first is called). The
 * arguments are the minimal JSON instance of the tool's `parameters` schema. A conversation whose last message is a
 * tool result gets text (unless `tool_choice` forces a call), so a tool loop ends. Streams send the call as
 * `tool_calls` deltas (name first, then the arguments in pieces).
 */
export const TOOL_CALL_TRIGGER = 'CALL_TOOL';

interface ToolCall {
  id: string;
  name: string;
  arguments: string;
}

/**
 * The tool call a chat request gets instead of text, if any. With function `tools` given and `tool_choice` not
 * `'none'`, a call is made when `tool_choice` names a function (that one), is `'required'`, or the last message is a
 * user message containing `CALL_TOOL` (`CALL_TOOL:<name>` picks the tool, otherwise the first). Its arguments are the
 * minimal instance of the tool's `parameters` schema. A conversation that ends with a tool result gets text, so a
 * tool loop ends.
 */
function chatToolCall(body: Record<string, unknown>, messages: unknown[]): ToolCall | undefined {
  const tools = (Array.isArray(body.tools) ? body.tools : [])
    .filter((t): t is Record<string, unknown> => isRecord(t) && t.type === 'function' && isRecord(t.function))
    .map((t) => t.function as Record<string, unknown>)
    .filter((f) => typeof f.name === 'string');
  const choice = body.tool_choice;
  if (tools.length === 0 || choice === 'none') return undefined;
  let wanted: string | undefined;
  if (isRecord(choice) && isRecord(choice.function) && typeof choice.function.name === 'string') {
    wanted = choice.function.name;
  } else if (choice !== 'required') {
    const last = messages.at(-1);
    if (!isRecord(last) || last.role !== 'user') return undefined;
    const match = new RegExp(`${TOOL_CALL_TRIGGER}(?::([A-Za-z0-9_.-]+))?`).exec(messageText(last.content));
    if (!match) return undefined;
    wanted = match[1];
  }
  const tool = tools.find((f) => f.name === wanted) ?? tools[0]!;
  const schema = tool.parameters ?? { type: 'object', properties: {} };
  return {
    id: `call_${randomAlnum(24)}`,
    name: tool.name as string,
    arguments: JSON.stringify(minimalInstance(schema) ?? {}),
  };
}

/** A JSON reply for `response_format: { type: 'json_schema', json_schema: { schema } }`, if asked. */
export function jsonSchemaReply(
  format: unknown,
  schemaOf: (f: Record<string, unknown>) => unknown,
): string | undefined {
  if (!isRecord(format) || format.type !== 'json_schema') return undefined;
  return JSON.stringify(minimalInstance(schemaOf(format) ?? { type: 'object' }) ?? {});
}

const ALTERNATIVE_TOKENS = [' the', ' a', '.', ',', ' and', ' of', ' to', ' in', ' is', ' it'];

/** `logprobs.content` for `text`: one entry per token, with `topK` alternatives each. */
function tokenLogprobs(text: string, topK: number): object[] {
  const bytes = (token: string): number[] => [...Buffer.from(token, 'utf8')];
  return encode(text, ENCODE_OPTIONS).map((id) => {
    const token = decode([id]);
    const alternatives = ALTERNATIVE_TOKENS.filter((t) => t !== token).slice(0, Math.max(0, topK - 1));
    return {
      token,
      bytes: bytes(token),
      logprob: -0.0001,
      top_logprobs:
        topK > 0
          ? [
              { token, bytes: bytes(token), logprob: -0.0001 },
              ...alternatives.map((t, i) => ({ token: t, bytes: bytes(t), logprob: -(i + 5) })),
            ]
          : [],
    };
  });
}

interface ChunkCommon {
  id: string;
  created: number;
  model: string;
  service_tier: string;
  system_fingerprint: string;
}

interface ChatPlan {
  common: ChunkCommon;
  n: number;
  content: string;
  toolCall: ToolCall | undefined;
  finishReason: 'stop' | 'length' | 'tool_calls';
  /** `top_logprobs` count when `logprobs: true`; `undefined` without logprobs. */
  logprobs: number | undefined;
  usage: object;
  moderation: object | undefined;
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
  for (const param of ['max_tokens', 'max_completion_tokens', 'n'] as const) {
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
  const reported = replyModel(options, model);
  const messages = body.messages as unknown[];
  const limitRaw = body.max_completion_tokens ?? body.max_tokens;
  const limit = isPositiveInt(limitRaw) ? limitRaw : undefined;
  const chatReq: FakeChatRequest = {
    model,
    messages,
    body,
    endpoint: 'chat.completions',
    ...(limit !== undefined ? { max_tokens: limit } : {}),
  };
  const n = isPositiveInt(body.n) ? body.n : 1;
  const toolCall = chatToolCall(body, messages);

  const fullReply = options.reply
    ? options.reply(chatReq)
    : (jsonSchemaReply(body.response_format, (f) =>
        isRecord(f.json_schema) ? f.json_schema.schema : undefined,
      ) ?? defaultReply(chatReq));
  if (typeof fullReply !== 'string') throw new Error('reply() must return a string');

  const promptTokens = countChatPromptTokens(messages as CountableChatMessage[]);
  const text = generateText(options, chatReq, promptTokens, toolCall ? '' : fullReply);
  const perChoice = toolCall
    ? countTextTokens(toolCall.name + toolCall.arguments) + text.reasoningTokens
    : text.visibleTokens + text.reasoningTokens;
  const completionTokens = perChoice * n;
  const usage = {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: text.cachedTokens, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: text.reasoningTokens * n,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
  const moderationModel = requestedModeration(body);
  const plan: ChatPlan = {
    common: {
      id: `chatcmpl-${randomAlnum(29)}`,
      created: Math.floor(Date.now() / 1000),
      model: reported,
      service_tier: reportedTier(body.service_tier),
      system_fingerprint: 'fp_fakeopenai',
    },
    n,
    content: text.content,
    toolCall,
    finishReason: toolCall ? 'tool_calls' : text.truncated ? 'length' : 'stop',
    logprobs:
      body.logprobs === true && !toolCall
        ? Math.min(20, Math.max(0, Math.floor(Number(body.top_logprobs) || 0)))
        : undefined,
    usage,
    moderation: moderationModel
      ? inRequestModeration(
          ctx,
          moderationModel.model,
          messages.map((m) => (isRecord(m) ? messageText(m.content) : '')).filter(Boolean),
          toolCall ? toolCall.arguments : text.content,
          'chat',
        )
      : undefined,
  };

  if (ctx.record.stream) {
    const streamOptions = isRecord(body.stream_options) ? body.stream_options : {};
    await streamChat(ctx, plan, streamOptions.include_usage === true && !ctx.fault?.omitUsage);
    return;
  }
  const message = toolCall
    ? {
        role: 'assistant',
        content: null,
        refusal: null,
        annotations: [],
        tool_calls: [
          {
            id: toolCall.id,
            type: 'function',
            function: { name: toolCall.name, arguments: toolCall.arguments },
          },
        ],
      }
    : { role: 'assistant', content: plan.content, refusal: null, annotations: [] };
  const logprobs =
    plan.logprobs === undefined
      ? null
      : { content: tokenLogprobs(plan.content, plan.logprobs), refusal: null };
  ctx.ok(
    {
      ...plan.common,
      object: 'chat.completion',
      choices: Array.from({ length: n }, (_, index) => ({
        index,
        message,
        logprobs,
        finish_reason: plan.finishReason,
      })),
      usage,
      ...(plan.moderation ? { moderation: plan.moderation } : {}),
    },
    reported,
  );
}

async function streamChat(ctx: RouteContext, plan: ChatPlan, includeUsage: boolean): Promise<void> {
  const { fault } = ctx;
  const sse = ctx.openStream(plan.common.model);
  const chunk = (choices: unknown[], extra: object = {}): string =>
    JSON.stringify({
      ...plan.common,
      object: 'chat.completion.chunk',
      choices,
      ...(includeUsage ? { usage: null } : {}),
      ...extra,
    });
  const indexes = Array.from({ length: plan.n }, (_, i) => i);
  /** One chunk per choice (OpenAI sends each choice's delta in its own chunk). */
  const sendAll = async (delta: (index: number) => object, finish: string | null, logprobs?: object) => {
    for (const index of indexes) {
      const choice = { index, delta: delta(index), logprobs: logprobs ?? null, finish_reason: finish };
      if (!(await sse.send(chunk([choice])))) return false;
    }
    return true;
  };

  const { toolCall } = plan;
  const first = toolCall
    ? {
        role: 'assistant',
        content: null,
        refusal: null,
        tool_calls: [
          { index: 0, id: toolCall.id, type: 'function', function: { name: toolCall.name, arguments: '' } },
        ],
      }
    : { role: 'assistant', content: '', refusal: null };
  if (!(await sendAll(() => first, null))) return;
  const pieces = streamPieces(toolCall ? toolCall.arguments : plan.content);
  const stop = streamStop(fault, pieces.length);
  const count = stop?.count ?? pieces.length;
  for (let i = 0; i < count; i++) {
    const piece = pieces[i]!;
    const delta = toolCall
      ? { tool_calls: [{ index: 0, function: { arguments: piece } }] }
      : { content: piece };
    const logprobs =
      plan.logprobs === undefined
        ? undefined
        : { content: tokenLogprobs(piece, plan.logprobs), refusal: null };
    if (!(await sendAll(() => delta, null, logprobs))) return;
  }
  if (stop?.kind === 'cut') {
    sse.destroy();
    return;
  }
  if (stop?.kind === 'stall') return; // the socket stays open until the client gives up or close()
  if (stop) {
    const { code, message } = streamErrorOf(fault);
    await sse.send(JSON.stringify({ error: { message, type: 'server_error', param: null, code } }));
    sse.end();
    return;
  }
  if (!(await sendAll(() => ({}), plan.finishReason))) return;
  if (plan.moderation && !(await sse.send(chunk([], { moderation: plan.moderation })))) return;
  if (includeUsage && !(await sse.send(chunk([], { usage: plan.usage })))) return;
  if (!fault?.omitDone && !(await sse.send('[DONE]'))) return;
  sse.end();
}
