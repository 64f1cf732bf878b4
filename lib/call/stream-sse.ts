import { HttpException } from '@nestjs/common';
import type { ServerResponse } from 'node:http';
import { RequestContextStore } from '../request-context/request-context.js';
import { OPENAI_REQUEST_ID_HEADER } from '../openai.constants.js';
import type { ModelStream, StreamSummary } from '../openai.service.js';
import type { OpenAIErrorBody } from '../errors/openai-http.exceptions.js';

/** Options of `sendChatStreamAsSse()`. */
export interface ChatStreamSseOptions {
  /** Extra fields of the final usage event (e.g. `cost_usd`), computed from the summary. */
  summaryFields?: (summary: StreamSummary) => Record<string, unknown> | Promise<Record<string, unknown>>;
}

/**
 * Writes a `ChatStream` or a `ResponseStream` to a raw Node response as server-sent events (the same
 * events for both endpoints), flushing each text delta as it arrives:
 * `data: {"delta":"..."}` events, then `data: {"usage":{...},...}`, then `data: [DONE]`. A failure after the
 * headers went out ends the stream with one `data: {"error":{statusCode,error,message,request_id}}` event
 * and no `[DONE]`. A client that disconnects aborts the upstream request.
 *
 * With Express pass `res`; with Fastify pass `reply.raw` (and `reply.hijack()` first).
 */
export async function sendChatStreamAsSse<Event>(
  stream: ModelStream<Event>,
  res: ServerResponse,
  options: ChatStreamSseOptions = {},
): Promise<void> {
  const onClose = () => {
    if (!res.writableFinished) stream.abort();
  };
  res.on('close', onClose);
  res.statusCode = 200;
  res.setHeader('content-type', 'text/event-stream; charset=utf-8');
  res.setHeader('cache-control', 'no-cache, no-transform');
  res.setHeader('connection', 'keep-alive');
  res.setHeader('x-accel-buffering', 'no');
  if (stream.openaiRequestId) res.setHeader(OPENAI_REQUEST_ID_HEADER, stream.openaiRequestId);
  res.flushHeaders();
  const send = (data: unknown) => {
    if (!res.destroyed) res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };
  try {
    for await (const event of stream) {
      const delta = stream.delta(event);
      if (delta) send({ delta });
    }
    const summary = await stream.finished;
    const u = summary.usage;
    send({
      usage: {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
      },
      ...(options.summaryFields ? await options.summaryFields(summary) : {}),
    });
    send('[DONE]');
  } catch (err) {
    const body: OpenAIErrorBody =
      err instanceof HttpException && typeof err.getResponse() === 'object'
        ? (err.getResponse() as OpenAIErrorBody)
        : {
            statusCode: 502,
            error: 'upstream_error',
            message: 'The stream failed',
            request_id: RequestContextStore.get()?.requestId,
          };
    send({
      error: {
        statusCode: body.statusCode,
        error: body.error,
        message: body.message,
        request_id: body.request_id,
      },
    });
  } finally {
    res.off('close', onClose);
    res.end();
  }
}

/** `sendChatStreamAsSse` under the name that fits a Responses stream: the events are the same. */
export const sendResponseStreamAsSse = sendChatStreamAsSse;
