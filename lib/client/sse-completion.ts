/**
 * The SDK's stream iterator ends quietly when an SSE response stops without `data: [DONE]`. To tell a
 * complete stream from a cut one, the client's `fetch` watches event-stream bodies for the sentinel.
 */
const completion = new WeakMap<Response, { done: boolean }>();
const SENTINEL = Buffer.from('data: [DONE]');

function watch(body: ReadableStream<Uint8Array>, state: { done: boolean }): ReadableStream<Uint8Array> {
  let tail = Buffer.alloc(0);
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (!state.done) {
          const joined = Buffer.concat([tail, chunk]);
          if (joined.includes(SENTINEL)) state.done = true;
          else tail = joined.subarray(Math.max(0, joined.length - SENTINEL.length));
        }
        controller.enqueue(chunk);
      },
    }),
  );
}

/** Wraps `fetch` so that event-stream responses record whether `data: [DONE]` arrived. */
export function sseCompletionFetch(base: typeof fetch = globalThis.fetch): typeof fetch {
  return async (input, init) => {
    const res = await base(input, init);
    if (!res.body || !res.headers.get('content-type')?.includes('text/event-stream')) return res;
    const state = { done: false };
    const wrapped = new Response(watch(res.body, state), {
      status: res.status,
      statusText: res.statusText,
      headers: res.headers,
    });
    completion.set(wrapped, state);
    return wrapped;
  };
}

/** Whether the event-stream `response` delivered `data: [DONE]`; `undefined` when it was not watched. */
export function sseCompleted(response: Response): boolean | undefined {
  return completion.get(response)?.done;
}
