import { countChatPromptTokens, type CountableChatMessage } from '../../tokens/token-counter.js';
import { isRecord } from '../../utils/is-record.js';
import type { FakeChatRequest } from '../fake-openai.options.js';
import { defaultReply, jsonSchemaReply } from './chat-completions.route.js';
import { inRequestModeration, requestedModeration } from './moderations.route.js';
import {
  reportedTier,
  generateText,
  HttpError,
  isPositiveInt,
  randomHex,
  replyModel,
  requireModel,
  streamErrorOf,
  streamPieces,
  streamStop,
  type RouteContext,
} from './route-helpers.js';

/** Text parts of a Responses content array as chat `{ type: 'text', text }` parts; other parts are dropped. */
function textParts(content: unknown): string | Array<{ type: 'text'; text: string }> {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content
    .filter(
      (p): p is { type: string; text: string } =>
        isRecord(p) &&
        (p.type === 'input_text' || p.type === 'output_text' || p.type === 'text') &&
        typeof p.text === 'string',
    )
    .map((p) => ({ type: 'text' as const, text: p.text }));
}

/** `instructions` and `input` as chat-style messages (see {@link FakeChatRequest.messages}). */
function inputMessages(body: Record<string, unknown>): Array<{ role: string; content: unknown }> {
  const messages: Array<{ role: string; content: unknown }> = [];
  if (typeof body.instructions === 'string' && body.instructions) {
    messages.push({ role: 'system', content: body.instructions });
  }
  const input = body.input;
  if (typeof input === 'string') {
    messages.push({ role: 'user', content: input });
  } else if (Array.isArray(input)) {
    for (const item of input) {
      if (
        isRecord(item) &&
        typeof item.role === 'string' &&
        (item.type === undefined || item.type === 'message')
      ) {
        messages.push({ role: item.role, content: textParts(item.content) });
      }
    }
  } else {
    throw new HttpError(
      400,
      "Missing required parameter: 'input'.",
      'invalid_request_error',
      'input',
      'missing_required_parameter',
    );
  }
  return messages;
}

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  return Array.isArray(content) ? content.map((p: { text: string }) => p.text).join('\n') : '';
}

/** `POST /v1/responses`, JSON or typed SSE events. */
export async function responsesRoute(ctx: RouteContext, body: unknown): Promise<void> {
  if (!isRecord(body)) throw new HttpError(400, 'The request body must be a JSON object.');
  const model = requireModel(body);
  const maxOutput = body.max_output_tokens;
  if (maxOutput !== undefined && maxOutput !== null && !isPositiveInt(maxOutput)) {
    throw new HttpError(
      400,
      "Invalid 'max_output_tokens': must be an integer >= 1.",
      'invalid_request_error',
      'max_output_tokens',
      'integer_below_min_value',
    );
  }
  const { options } = ctx;
  const reported = replyModel(options, model);
  const messages = inputMessages(body);
  const req: FakeChatRequest = {
    model,
    messages,
    body,
    endpoint: 'responses',
    ...(isPositiveInt(maxOutput) ? { max_tokens: maxOutput } : {}),
  };
  const text = isRecord(body.text) ? body.text : undefined;
  const fullReply = options.reply
    ? options.reply(req)
    : (jsonSchemaReply(text?.format, (f) => f.schema) ?? defaultReply(req));
  if (typeof fullReply !== 'string') throw new Error('reply() must return a string');

  const inputTokens = countChatPromptTokens(messages as CountableChatMessage[]);
  const gen = generateText(options, req, inputTokens, fullReply);
  const outputTokens = gen.visibleTokens + gen.reasoningTokens;
  const usage = {
    input_tokens: inputTokens,
    input_tokens_details: { cached_tokens: gen.cachedTokens },
    output_tokens: outputTokens,
    output_tokens_details: { reasoning_tokens: gen.reasoningTokens },
    total_tokens: inputTokens + outputTokens,
  };
  const moderationModel = requestedModeration(body);
  const moderation = moderationModel
    ? inRequestModeration(
        ctx,
        moderationModel.model,
        messages.map((m) => textOf(m.content)).filter(Boolean),
        gen.content,
        'responses',
      )
    : undefined;

  const id = `resp_${randomHex(24)}`;
  const itemId = `msg_${randomHex(24)}`;
  const createdAt = Math.floor(Date.now() / 1000);
  const finalStatus = gen.truncated ? 'incomplete' : 'completed';
  const part = (t: string) => ({ type: 'output_text', text: t, annotations: [], logprobs: [] });
  const item = (status: string, content: object[]) => ({
    id: itemId,
    type: 'message',
    status,
    role: 'assistant',
    content,
  });
  const echo = (key: string, fallback: unknown = null): unknown => body[key] ?? fallback;
  /** The response object at a stage of its life. */
  const response = (status: string, output: object[], extra: object = {}): Record<string, unknown> => ({
    id,
    object: 'response',
    created_at: createdAt,
    status,
    background: false,
    completed_at: status === 'completed' ? Math.floor(Date.now() / 1000) : null,
    error: null,
    incomplete_details: null,
    instructions: echo('instructions'),
    max_output_tokens: echo('max_output_tokens'),
    max_tool_calls: echo('max_tool_calls'),
    model: reported,
    output,
    parallel_tool_calls: echo('parallel_tool_calls', true),
    previous_response_id: echo('previous_response_id'),
    prompt_cache_key: echo('prompt_cache_key'),
    reasoning: echo('reasoning', { effort: null, summary: null }),
    safety_identifier: echo('safety_identifier'),
    service_tier: reportedTier(body.service_tier),
    store: echo('store', true),
    temperature: echo('temperature', 1),
    text: text ?? { format: { type: 'text' }, verbosity: 'medium' },
    tool_choice: echo('tool_choice', 'auto'),
    tools: echo('tools', []),
    top_logprobs: echo('top_logprobs', 0),
    top_p: echo('top_p', 1),
    truncation: echo('truncation', 'disabled'),
    usage: null,
    user: echo('user'),
    metadata: echo('metadata', {}),
    ...(moderation ? { moderation: null } : {}),
    ...extra,
  });
  const final = response(finalStatus, [item(finalStatus, [part(gen.content)])], {
    ...(gen.truncated ? { incomplete_details: { reason: 'max_output_tokens' } } : {}),
    ...(ctx.fault?.omitUsage ? {} : { usage }),
    ...(moderation ? { moderation } : {}),
  });
  if (ctx.fault?.omitUsage) delete final.usage;

  if (!ctx.record.stream) {
    ctx.ok(final, reported);
    return;
  }

  const sse = ctx.openStream(reported);
  let sequence = 0;
  const emit = (type: string, fields: object): Promise<boolean> =>
    sse.send(JSON.stringify({ type, ...fields, sequence_number: sequence++ }), type);
  const at = { item_id: itemId, output_index: 0, content_index: 0 };

  if (!(await emit('response.created', { response: response('in_progress', []) }))) return;
  if (!(await emit('response.in_progress', { response: response('in_progress', []) }))) return;
  if (!(await emit('response.output_item.added', { output_index: 0, item: item('in_progress', []) }))) return;
  if (!(await emit('response.content_part.added', { ...at, part: part('') }))) return;
  const pieces = streamPieces(gen.content);
  const stop = streamStop(ctx.fault, pieces.length);
  const count = stop?.count ?? pieces.length;
  for (let i = 0; i < count; i++) {
    if (!(await emit('response.output_text.delta', { ...at, delta: pieces[i], logprobs: [] }))) return;
  }
  if (stop?.kind === 'cut') {
    sse.destroy();
    return;
  }
  if (stop?.kind === 'stall') return; // the socket stays open until the client gives up or close()
  if (stop) {
    const { code, message } = streamErrorOf(ctx.fault);
    if (stop.kind === 'fail') {
      const partial = pieces.slice(0, count).join('');
      await emit('response.failed', {
        response: response('failed', [item('in_progress', [part(partial)])], { error: { code, message } }),
      });
    } else {
      await emit('error', { code, message, param: null });
    }
    sse.end();
    return;
  }
  if (!(await emit('response.output_text.done', { ...at, text: gen.content, logprobs: [] }))) return;
  if (!(await emit('response.content_part.done', { ...at, part: part(gen.content) }))) return;
  if (
    !(await emit('response.output_item.done', {
      output_index: 0,
      item: item(finalStatus, [part(gen.content)]),
    }))
  ) {
    return;
  }
  if (!ctx.fault?.omitDone) {
    if (!(await emit(gen.truncated ? 'response.incomplete' : 'response.completed', { response: final })))
      return;
  }
  sse.end();
}
