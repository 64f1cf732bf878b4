import { describe, expect, it } from 'vitest';
import { SentinelWatch, sseCompleted, sseCompletionFetch } from './sse-completion.js';

const bytes = (s: string) => new TextEncoder().encode(s);
const CHUNK = 'data: {"choices":[{"delta":{"content":"done"}}]}\n\n';
const USAGE = 'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n';

/** Feeds `text` to a new watch cut at `cuts` (byte offsets). */
function watchCut(text: string, cuts: number[]): boolean {
  const all = bytes(text);
  const w = new SentinelWatch();
  let from = 0;
  for (const at of [...cuts, all.length]) {
    w.see(all.subarray(from, at));
    from = at;
  }
  return w.done;
}

describe('SentinelWatch', () => {
  const complete = `${CHUNK}${USAGE}data: [DONE]\n\n`;

  it('sees the sentinel line wherever the body is cut once, and in 1-byte chunks', () => {
    for (let at = 0; at <= complete.length; at++) expect(watchCut(complete, [at])).toBe(true);
    const everyByte = Array.from({ length: complete.length }, (_, i) => i);
    expect(watchCut(complete, everyByte)).toBe(true);
  });

  it('sees it split across three chunks', () => {
    const start = complete.indexOf('data: [DONE]');
    for (let a = start; a < start + 14; a++)
      for (let b = a + 1; b <= start + 14; b++) expect(watchCut(complete, [a, b])).toBe(true);
  });

  it('takes both SSE spellings and any line end, with no line end at all at the very end', () => {
    expect(watchCut(`${CHUNK}data:[DONE]\n\n`, [])).toBe(true);
    expect(watchCut(`${CHUNK}data: [DONE]\r\n\r\n`, [])).toBe(true);
    expect(watchCut(`${CHUNK}data: [DONE]`, [])).toBe(true);
    expect(watchCut('data: [DONE]\n\n', [])).toBe(true);
  });

  it('a large last chunk that starts with the sentinel line counts when the chunk before ended a line', () => {
    const big = `data: [DONE]${'\n'.repeat(100)}`;
    expect(watchCut(`${CHUNK}${big}`, [CHUNK.length])).toBe(true);
    expect(watchCut(`${CHUNK.trimEnd()}x${big}`, [CHUNK.trimEnd().length + 1])).toBe(false);
  });

  it('does not count a cut body, the sentinel inside a line or JSON, or one followed by more events', () => {
    const cut = `${CHUNK}${USAGE}`;
    for (let at = 0; at <= cut.length; at++) expect(watchCut(cut, [at])).toBe(false);
    const quoted = `${CHUNK}data: {"model":"m data: [DONE]"}\n\n`;
    for (let at = 0; at <= quoted.length; at++) expect(watchCut(quoted, [at])).toBe(false);
    expect(watchCut(`${CHUNK}xdata: [DONE]\n\n`, [])).toBe(false);
    expect(watchCut(`${CHUNK}data: [DONE] \n\n`, [])).toBe(false);
    expect(watchCut(`${CHUNK}data:  [DONE]\n\n`, [])).toBe(false);
    expect(watchCut(`data: [DONE]\n\n${USAGE}`, [])).toBe(false);
    expect(watchCut('', [])).toBe(false);
  });
});

/** A fetch whose replies are `body` cut into `chunks`, with the given content type. */
function fetchReplying(chunks: string[], contentType: string): typeof fetch {
  return async () =>
    new Response(
      new ReadableStream<Uint8Array>({
        start(c) {
          for (const chunk of chunks) c.enqueue(bytes(chunk));
          c.close();
        },
      }),
      { headers: { 'content-type': contentType } },
    );
}

/** Reads a body the way the SDK does: `getReader()` then `read()` to the end. */
async function readAll(res: Response): Promise<string> {
  const reader = res.body!.getReader();
  let text = '';
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return text;
    text += decoder.decode(value, { stream: true });
  }
}

describe('sseCompletionFetch', () => {
  const CHAT = 'http://127.0.0.1:1/v1/chat/completions';

  it('records a chat event stream that ended with the sentinel, passing the bytes on unchanged', async () => {
    const chunks = [CHUNK, USAGE, 'data: [DO', 'NE]\n\n'];
    const res = await sseCompletionFetch(fetchReplying(chunks, 'text/event-stream; charset=utf-8'))(CHAT);
    expect(sseCompleted(res)).toBe(false);
    expect(await readAll(res)).toBe(chunks.join(''));
    expect(sseCompleted(res)).toBe(true);
  });

  it('records a chat event stream that stopped without it', async () => {
    const res = await sseCompletionFetch(fetchReplying([CHUNK, USAGE], 'text/event-stream'))(CHAT);
    await readAll(res);
    expect(sseCompleted(res)).toBe(false);
  });

  it('watches a chat reply whatever event-stream spelling it declares', async () => {
    const res = await sseCompletionFetch(
      fetchReplying([CHUNK, 'data: [DONE]\n\n'], 'Text/Event-Stream; Charset=UTF-8'),
    )(CHAT);
    await readAll(res);
    expect(sseCompleted(res)).toBe(true);
  });

  it('leaves JSON replies and other endpoints unwatched', async () => {
    const json = await sseCompletionFetch(fetchReplying(['{}'], 'application/json'))(CHAT);
    expect(await readAll(json)).toBe('{}');
    expect(sseCompleted(json)).toBeUndefined();
    const responses = await sseCompletionFetch(fetchReplying([CHUNK], 'text/event-stream'))(
      new URL('http://127.0.0.1:1/v1/responses'),
    );
    await readAll(responses);
    expect(sseCompleted(responses)).toBeUndefined();
  });
});
