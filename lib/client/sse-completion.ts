/**
 * The SDK's stream iterator ends quietly when an SSE response stops without `data: [DONE]`. To tell a
 * complete chat stream from a cut one, the client's `fetch` watches the bytes of chat event streams as
 * the SDK reads them. (Responses API streams need no watch: their clean end is the `response.completed`
 * event, which their adapter reads.)
 */

/** The two spellings of the sentinel line (SSE drops one space after the field's colon). */
const SENTINEL_LINES = [Buffer.from('data: [DONE]'), Buffer.from('data:[DONE]')];
/** Bytes of the body's end kept: the sentinel line and the line ends after it. */
const TAIL = 64;
const LF = 10;
const CR = 13;

/**
 * Whether a body ended with the `[DONE]` sentinel: its last line (line ends after it aside) is the
 * sentinel's SSE field, whole. Only the chunks that hold the body's last `TAIL` bytes are kept (as
 * references: no copy per chunk); the check runs once, when asked. The sentinel's text anywhere
 * else (inside a JSON string, a line that merely contains it) does not count: JSON strings cannot hold
 * a line end, so such text never starts a line of its own. @internal
 */
export class SentinelWatch {
  /** The last chunks read, oldest first, holding at least the body's last `TAIL` bytes. */
  private readonly tail: Uint8Array[] = [];
  private tailBytes = 0;
  /** The byte just before `tail` (-1: `tail` starts the body). */
  private before = -1;

  /** Reads the next chunk of the body. */
  see(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (chunk.length >= TAIL) {
      if (this.tailBytes > 0) {
        const last = this.tail[this.tail.length - 1];
        this.before = last[last.length - 1];
      }
      this.tail.length = 0;
      this.tail.push(chunk);
      this.tailBytes = chunk.length;
      return;
    }
    this.tail.push(chunk);
    this.tailBytes += chunk.length;
    while (this.tailBytes - this.tail[0].length >= TAIL) {
      const dropped = this.tail.shift()!;
      this.tailBytes -= dropped.length;
      this.before = dropped[dropped.length - 1];
    }
  }

  /** Whether the body read so far ends with the sentinel line. */
  get done(): boolean {
    if (this.tailBytes === 0) return false;
    const bytes = this.tail.length === 1 ? this.tail[0] : Buffer.concat(this.tail);
    let end = bytes.length;
    while (end > 0 && (bytes[end - 1] === LF || bytes[end - 1] === CR)) end--;
    let start = end;
    while (start > 0 && bytes[start - 1] !== LF && bytes[start - 1] !== CR) start--;
    // The line must start the body or follow a line end (one in the bytes no longer held counts).
    if (start === 0 && this.before !== -1 && this.before !== LF && this.before !== CR) return false;
    const n = end - start;
    return SENTINEL_LINES.some((line) => {
      if (line.length !== n) return false;
      for (let i = 0; i < n; i++) if (bytes[start + i] !== line[i]) return false;
      return true;
    });
  }

  /** `see` as a `reader.read()` continuation: passes the result on. */
  readonly seeResult = <R extends { value?: Uint8Array }>(r: R): R => {
    if (r.value) this.see(r.value);
    return r;
  };
}

const watches = new WeakMap<Response, SentinelWatch>();

function requestUrl(input: Parameters<typeof fetch>[0]): string {
  return typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
}

/**
 * Wraps `fetch` so that chat replies other than JSON (event streams, whatever their declared type)
 * record whether they ended with `data: [DONE]`. The response is returned as it came (no copy, no
 * extra stream): the reader its body hands out (the SDK reads the body through `getReader()`) passes
 * each chunk to a `SentinelWatch` on its way to the SDK. Were the SDK to read the body another way,
 * every chat stream would be reported incomplete (loudly, as a 502), never a cut one complete.
 */
export function sseCompletionFetch(base: typeof fetch = globalThis.fetch): typeof fetch {
  return async (input, init) => {
    const res = await base(input, init);
    const body = res.body;
    if (
      !body ||
      !requestUrl(input).includes('/chat/completions') ||
      res.headers.get('content-type')?.toLowerCase().includes('json')
    )
      return res;
    const watch = new SentinelWatch();
    watches.set(res, watch);
    const getReader = body.getReader.bind(body) as (...args: unknown[]) => unknown;
    Object.defineProperty(body, 'getReader', {
      configurable: true,
      writable: true,
      value: (...args: unknown[]) => {
        const reader = getReader(...args) as ReadableStreamDefaultReader<Uint8Array>;
        // A BYOB reader fills the caller's buffers: not what the SDK asks for; left unwatched (incomplete).
        if (args[0] !== undefined) return reader;
        const read = reader.read.bind(reader);
        reader.read = () => read().then(watch.seeResult);
        return reader;
      },
    });
    return res;
  };
}

/**
 * Whether the chat event-stream `response` ended with `data: [DONE]`; `undefined` when it was not
 * watched (a JSON reply, or a response that did not come through `sseCompletionFetch`).
 */
export function sseCompleted(response: Response): boolean | undefined {
  return watches.get(response)?.done;
}
