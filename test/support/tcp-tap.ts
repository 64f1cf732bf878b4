import { createServer, connect, type Server, type Socket } from 'node:net';

/** One TCP connection through the tap. */
export interface TapConn {
  /** Both sides closed (the SDK's socket or the fake's). */
  closed: boolean;
  /** The SDK's side closed first (it cancelled the request). */
  clientClosedFirst: boolean;
  /** Bytes the fake sent on it. */
  fromUpstream: number;
  /** Whether it carried an event stream. */
  sse: boolean;
  /** Order in which its last event stream started (the highest is the latest stream). */
  sseSeq: number;
}

/**
 * A TCP proxy between the SDK and the fake: records each connection and when it closes, and can cut what
 * the fake sends into `chunkBytes`-byte TCP writes (with a pause between them, so they are read apart).
 */
export class TcpTap {
  readonly conns: TapConn[] = [];
  chunkBytes = 0;
  private seq = 0;
  private server!: Server;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(private readonly upstreamPort: number) {}

  async start(): Promise<this> {
    this.server = createServer((client) => {
      const c: TapConn = { closed: false, clientClosedFirst: false, fromUpstream: 0, sse: false, sseSeq: 0 };
      this.conns.push(c);
      const upstream = connect(this.upstreamPort, '127.0.0.1');
      this.sockets.add(client).add(upstream);
      client.setNoDelay(true);
      upstream.setNoDelay(true);
      let upstreamClosed = false;
      let queue = Promise.resolve();
      client.on('data', (d) => upstream.write(d));
      upstream.on('data', (d: Buffer) => {
        c.fromUpstream += d.length;
        if (d.includes('text/event-stream')) {
          c.sse = true;
          c.sseSeq = ++this.seq;
        }
        const size = this.chunkBytes;
        if (!size) {
          client.write(d);
          return;
        }
        upstream.pause();
        queue = queue.then(async () => {
          for (let i = 0; i < d.length; i += size) {
            if (client.destroyed) return;
            client.write(d.subarray(i, i + size));
            await new Promise((r) => setTimeout(r, 1));
          }
          upstream.resume();
        });
      });
      const closeBoth = () => {
        c.closed = true;
        client.destroy();
        upstream.destroy();
      };
      client.on('close', () => {
        if (!upstreamClosed) c.clientClosedFirst = true;
        closeBoth();
        this.sockets.delete(client);
      });
      upstream.on('close', () => {
        upstreamClosed = true;
        void queue.then(() => client.end());
        this.sockets.delete(upstream);
        c.closed = true;
      });
      client.on('error', () => undefined);
      upstream.on('error', () => undefined);
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  get baseURL(): string {
    return `http://127.0.0.1:${this.port}/v1`;
  }

  /** The connection that carried the latest event stream. */
  lastStream(): TapConn | undefined {
    return this.conns.filter((c) => c.sse).sort((a, b) => b.sseSeq - a.sseSeq)[0];
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** Polls `cond` every 10 ms for up to `ms`; its last answer. */
export async function until(cond: () => boolean, ms = 1_500): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return cond();
}

/** Sum of `*upstream_errors_total` samples. */
export function upstreamErrors(text: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^\w*upstream_errors_total(?:\{.*\})?\s+(\S+)$/.exec(line);
    if (m) sum += Number(m[1]);
  }
  return sum;
}
