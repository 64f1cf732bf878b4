/**
 * The SDK's stream iterator ends quietly when an SSE response stops without `data: [DONE]`. To tell a
 * complete chat stream from a cut one, the client's `fetch` watches the bytes of chat event streams for
 * the sentinel as the SDK reads them. (Responses API streams need no watch: their clean end is the
 * `response.completed` event, which their adapter reads.)
 */
const SENTINEL = Buffer.from('data: [DONE]');
const indexOf = Buffer.prototype.indexOf;

/**
 * Looks for the sentinel across the chunks of one body, without copying them: a chunk is searched in
 * place, and a sentinel split between chunks is matched from the prefix of it that the previous chunk
 * ended with. No proper prefix of `data: [DONE]` ends with another of its prefixes, so at most one such
 * carried prefix exists at any point. @internal
 */
export class SentinelWatch {
  /** Whether the whole sentinel was seen. */
  done = false;
  /** Bytes of the sentinel the chunks read so far ended with (0 to 11). */
  private carried = 0;

  /** Reads the next chunk of the body. */
  see(chunk: Uint8Array): void {
    if (this.done || chunk.length === 0) return;
    if (this.carried > 0) {
      const need = SENTINEL.length - this.carried;
      const n = Math.min(need, chunk.length);
      if (startsWith(chunk, this.carried, n)) {
        if (n === need) {
          this.done = true;
          return;
        }
        // The whole chunk continued the sentinel without finishing it.
        this.carried += n;
        return;
      }
    }
    if (indexOf.call(chunk, SENTINEL) !== -1) {
      this.done = true;
      return;
    }
    this.carried = carriedPrefix(chunk);
  }

  /** `see` as a `reader.read()` continuation: passes the result on. */
  readonly seeResult = <R extends { value?: Uint8Array }>(r: R): R => {
    if (r.value) this.see(r.value);
    return r;
  };
}

/** Whether `chunk` starts with the `n` sentinel bytes from `from`. */
function startsWith(chunk: Uint8Array, from: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (chunk[i] !== SENTINEL[from + i]) return false;
  return true;
}

/** Length of the longest proper prefix of the sentinel that `chunk` ends with (0 when none). */
function carriedPrefix(chunk: Uint8Array): number {
  const len = chunk.length;
  for (let k = Math.min(SENTINEL.length - 1, len); k > 0; k--) {
    const at = len - k;
    if (chunk[at] !== SENTINEL[0]) continue;
    let i = 1;
    while (i < k && chunk[at + i] === SENTINEL[i]) i++;
    if (i === k) return k;
  }
  return 0;
}

const watches = new WeakMap<Response, SentinelWatch>();

function requestUrl(input: Parameters<typeof fetch>[0]): string {
  return typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
}

/**
 * Wraps `fetch` so that chat event-stream responses record whether `data: [DONE]` arrived. The
 * response is returned as it came (no copy, no extra stream): the reader its body hands out (the SDK
 * reads the body through `getReader()`) passes each chunk to a `SentinelWatch` on its way to the SDK.
 * Were the SDK to read the body another way, every chat stream would be reported incomplete (loudly,
 * as a 502), never a cut one complete.
 */
export function sseCompletionFetch(base: typeof fetch = globalThis.fetch): typeof fetch {
  return async (input, init) => {
    const res = await base(input, init);
    const body = res.body;
    if (
      !body ||
      !requestUrl(input).includes('/chat/completions') ||
      !res.headers.get('content-type')?.includes('text/event-stream')
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

/** Whether the chat event-stream `response` delivered `data: [DONE]`; `undefined` when it was not watched. */
export function sseCompleted(response: Response): boolean | undefined {
  return watches.get(response)?.done;
}
