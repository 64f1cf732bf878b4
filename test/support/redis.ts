import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { inject } from 'vitest';

/**
 * URL of the shared redis-server started by the global setup, or '' when redis-server is missing.
 * Missing in CI: throws, so the suite fails instead of skipping. Missing elsewhere: says so loudly.
 *
 * @example const url = sharedRedisUrl(); describe.skipIf(!url)('on Redis', () => { ... });
 */
export function sharedRedisUrl(): string {
  const url = inject('redisUrl');
  if (!url) {
    if (process.env.CI)
      throw new Error(
        'redis-server is required in CI: a Redis suite must not be skipped (install redis-server)',
      );
    console.warn('!!! redis-server not found: this Redis suite is SKIPPED');
  }
  return url;
}

/** A key prefix no other suite or test uses, e.g. `t:flood:3fa2c1:`. */
export function uniquePrefix(name: string): string {
  return `t:${name}:${randomBytes(4).toString('hex')}:`;
}

/** An ioredis client for assertions (KEYS, SCAN, HGET, MONITOR...). Disconnect it in afterAll. */
export function redisClient(url: string): Redis {
  const client = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: false });
  client.on('error', () => undefined);
  return client;
}

/** Every key under `prefix` (SCAN, not KEYS, so a big shared server is not blocked). */
export async function keysUnder(client: Redis, prefix: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    out.push(...batch);
  } while (cursor !== '0');
  return out.sort();
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `check` until it returns true (or a truthy value), up to `timeoutMs`; throws naming `what` otherwise. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T> | T,
  timeoutMs = 10_000,
  everyMs = 25,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`,
      );
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * The commands Redis received from clients, as MONITOR shows them: the round trips, not the commands a
 * script ran inside Redis. `from`: only those one client sent.
 */
export class RedisCommandLog {
  readonly seen: string[][] = [];
  private constructor(private readonly monitor: Redis) {}
  static async start(admin: Redis, from?: Redis): Promise<RedisCommandLog> {
    const only = from ? `${from.stream.localAddress}:${from.stream.localPort}` : undefined;
    const monitor = await admin.monitor();
    const log = new RedisCommandLog(monitor);
    monitor.on('monitor', (_time: string, args: string[], source: string) => {
      if (source !== 'lua' && (only === undefined || source === only)) log.seen.push(args);
    });
    return log;
  }
  /** Waits until MONITOR has shown everything sent before this call (through `via`); returns and forgets it. */
  async flush(via: Redis): Promise<string[][]> {
    const marker = `marker-${Math.random()}`;
    await via.echo(marker);
    await waitFor('the MONITOR marker', () => this.seen.some((a) => a[0] === 'echo' && a[1] === marker));
    const out = this.seen.filter((a) => !(a[0] === 'echo' && a[1]?.startsWith('marker-')));
    this.seen.length = 0;
    return out;
  }
  stop(): void {
    this.monitor.disconnect();
  }
}

async function pings(port: number): Promise<boolean> {
  const c = new Redis({
    port,
    host: '127.0.0.1',
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  c.on('error', () => undefined);
  try {
    await c.connect();
    return (await c.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    c.disconnect();
  }
}

/**
 * A redis-server of the test's own, to kill and restart (never the shared one). `stop()` kills it
 * (SIGKILL, as a crash) and waits for the exit; `start()` starts it again on the same port, empty.
 */
export class OwnRedis {
  private child?: ChildProcess;
  private constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<OwnRedis> {
    const r = new OwnRedis(await freePort());
    await r.start();
    return r;
  }

  async start(): Promise<void> {
    if (this.child) return;
    const child = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    this.child = child;
    child.once('exit', () => {
      if (this.child === child) this.child = undefined;
    });
    await waitFor(`redis-server on port ${this.port}`, () => pings(this.port), 10_000, 20);
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
  }
}
