// Child process of the streaming bench (section E): two fake OpenAI servers, one streaming with no delay
// (time to first chunk) and one with a delay between SSE events (per-chunk latency), both answering a
// text of `chunks` pieces. Every piece carries two times of this process's `process.hrtime.bigint()`:
// when it was written to the socket, and when its request arrived (the server's `request` event).
// CLOCK_MONOTONIC is shared by the processes of a Linux machine, so the bench process can subtract them
// from its own times, and tell the upstream's own time (request arrived -> chunk written) apart.
//   fork('stream-upstream.js', [chunks, delayMs]) -> IPC { ttfbURL, chunksURL }; exits on disconnect.
import { Server, ServerResponse, type IncomingMessage } from 'node:http';
import { FakeOpenAIServer } from '../../lib/testing/index.js';

/**
 * Where a piece's write time goes; replaced when the piece is written. Two tokens (so the reply stays
 * far below the library's 1,024-token output cap) and quick to tokenize.
 */
const WRITTEN = 'timestampplaceholder';
/** Where a piece's request arrival time goes; replaced when the piece is written. */
const RECEIVED = 'requestreceivedstamp';
/** Width of each time in characters: nanoseconds since boot, zero-padded (enough for centuries). */
export const STAMP_WIDTH = WRITTEN.length;

/** The reply: `chunks` pieces `<written>-<received> ` (the fake sends one piece per word). */
export function stampedReply(chunks: number): string {
  return `${WRITTEN}-${RECEIVED} `.repeat(chunks);
}

/** A piece's times (ns): when it was written, and when its request arrived. */
export function piece(text: string): { written: number; received: number } {
  return {
    written: Number(text.slice(0, STAMP_WIDTH)),
    received: Number(text.slice(STAMP_WIDTH + 1, 2 * STAMP_WIDTH + 1)),
  };
}

const arrived = Symbol('arrived');
type Stamped = IncomingMessage & { [arrived]?: bigint };
const ns = (t: bigint) => t.toString().padStart(STAMP_WIDTH, '0');

/**
 * Notes when each request arrives, and fills the placeholders of every written string: the fake
 * server writes each SSE event with one `res.write(string, cb)`, so that is when the event goes to
 * the socket.
 */
function stampWrites(): void {
  const server = Server.prototype as unknown as {
    emit: (this: Server, event: string | symbol, ...args: unknown[]) => boolean;
  };
  const emit = server.emit;
  server.emit = function (this: Server, event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'request') (args[0] as Stamped)[arrived] = process.hrtime.bigint();
    return emit.call(this, event, ...args);
  };
  const response = ServerResponse.prototype as unknown as {
    write: (this: ServerResponse, ...args: unknown[]) => boolean;
  };
  const write = response.write;
  response.write = function (this: ServerResponse, ...args: unknown[]): boolean {
    const chunk = args[0];
    if (typeof chunk === 'string' && chunk.includes(WRITTEN)) {
      const now = ns(process.hrtime.bigint());
      const received = ns((this.req as Stamped)[arrived] ?? 0n);
      args[0] = chunk.replaceAll(WRITTEN, now).replaceAll(RECEIVED, received);
    }
    return write.apply(this, args);
  };
}

async function main(): Promise<void> {
  const chunks = Number(process.argv[2] ?? 50);
  const delayMs = Number(process.argv[3] ?? 1);
  stampWrites();
  const text = stampedReply(chunks);
  const common = {
    reply: () => text,
    // Never run low: the production profile paces calls by the x-ratelimit-* headers.
    rateLimits: { requestsPerMinute: 1_000_000_000, tokensPerMinute: 1_000_000_000_000 },
  };
  const ttfb = await FakeOpenAIServer.start({ ...common, streamChunkDelayMs: 0 });
  const paced = await FakeOpenAIServer.start({ ...common, streamChunkDelayMs: delayMs });
  // The servers record every request: forget them now and then.
  setInterval(() => {
    ttfb.reset();
    paced.reset();
  }, 1_000).unref();
  process.on('disconnect', () => {
    void Promise.all([ttfb.close(), paced.close()]).then(() => process.exit(0));
  });
  process.send!({ ttfbURL: ttfb.baseURL, chunksURL: paced.baseURL });
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error('stream upstream failed:', err);
    process.exit(1);
  });
}
