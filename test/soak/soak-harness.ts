import 'reflect-metadata';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { INestApplication, LoggerService } from '@nestjs/common';
import { build } from 'rolldown';
import { UsageService } from '../../lib/index.js';
import type { FaultRule, RecordedRequest } from '../../lib/testing/index.js';
import { createSampleApp } from '../../sample/bootstrap.js';
import { readSampleConfig } from '../../sample/sample.config.js';

/**
 * The soak: two sample app instances (Express and Fastify) on one persistent Redis, many users, the
 * fake upstream in a child process injecting 429s with `retry-after-ms`, 500s, slow replies, dropped
 * connections and cut streams, clients aborting streams, Redis killed and restarted once. Loopback only;
 * bounded by `seconds` and by one request in flight per user.
 */
export interface SoakOptions {
  seconds: number;
  users: number;
  /** Daily budget of each user (USD). */
  budgetUsd: number;
  /** Progress lines (stderr). */
  log?: (line: string) => void;
}

export interface SoakReport {
  seconds: number;
  clientRequests: number;
  byStatus: Record<string, number>;
  streamsAborted: number;
  upstreamRequests: number;
  faults: Record<string, number>;
  /** Upstream chat requests answered with a 200 (a stream may have been cut after it): each must be in the ledger once. */
  upstreamAnswered: number;
  ledgerRequests: number;
  /** Users whose ledger differs from the upstream's log: [user, ledger, upstream]. */
  ledgerMismatches: Array<[string, number, number]>;
  /** Users whose ledger spend is above the budget: [user, spend]. */
  overspent: Array<[string, number]>;
  budgetRefusals: number;
  maxUserSpendUsd: number;
  redisRestartedAtS: number;
  redisDownMs: number;
  unhandled: string[];
  errorLogs: number;
  errorSamples: string[];
  /** heapUsed (MB) after a GC, sampled every 2 s. */
  heapMb: number[];
  heapPlateau: boolean;
  healthAfter: number[];
}

const CHAT = '/v1/chat/completions';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rnd = (a: number, b: number) => a + Math.floor(Math.random() * (b - a + 1));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** A redis-server with AOF fsynced on every write, so a SIGKILL loses nothing acknowledged. */
class PersistentRedis {
  private child?: ChildProcess;
  private constructor(
    readonly port: number,
    private readonly dir: string,
  ) {}
  static async start(): Promise<PersistentRedis> {
    const r = new PersistentRedis(await freePort(), mkdtempSync(join(tmpdir(), 'soak-redis-')));
    await r.start();
    return r;
  }
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }
  async start(): Promise<void> {
    const child = spawn(
      'redis-server',
      [
        '--port',
        String(this.port),
        '--bind',
        '127.0.0.1',
        '--dir',
        this.dir,
        '--appendonly',
        'yes',
        '--appendfsync',
        'always',
        '--save',
        '',
      ],
      { stdio: 'ignore' },
    );
    this.child = child;
    const deadline = Date.now() + 10_000;
    while (!(await ping(this.port))) {
      if (Date.now() > deadline) throw new Error(`redis-server on ${this.port} did not start`);
      await sleep(20);
    }
  }
  async kill(): Promise<void> {
    const c = this.child;
    this.child = undefined;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  }
  async close(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function ping(port: number): Promise<boolean> {
  return fetch(`http://127.0.0.1:${port}`)
    .then(() => true)
    .catch((err: { cause?: { code?: string } }) => err?.cause?.code !== 'ECONNREFUSED');
}

/** The fake upstream's CLI, bundled once into one file a plain `node` runs (the sources are TypeScript). */
async function fakeCli(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'soak-fake-'));
  const file = join(dir, 'fake-cli.mjs');
  await build({
    input: join(process.cwd(), 'lib/testing/cli.ts'),
    platform: 'node',
    logLevel: 'silent',
    output: { file, format: 'esm' },
  });
  return file;
}

/** The fake upstream in its own process; its control API on the same port. */
class UpstreamProcess {
  private constructor(
    private readonly child: ChildProcess,
    readonly baseURL: string,
  ) {}
  static async start(): Promise<UpstreamProcess> {
    const child = spawn(process.execPath, [await fakeCli(), '--port', '0', '--stream-chunk-delay-ms', '5'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const baseURL = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const line = out.split('\n')[0];
        if (out.includes('\n')) resolve(line.trim());
      });
      child.once('exit', (code) => reject(new Error(`fake upstream exited (${code})`)));
    });
    return new UpstreamProcess(child, baseURL);
  }
  private control(path: string, init?: RequestInit): Promise<Response> {
    return fetch(new URL(`/_control/${path}`, this.baseURL), {
      ...init,
      headers: { 'content-type': 'application/json' },
    });
  }
  async fault(rule: FaultRule): Promise<void> {
    await this.control('faults', { method: 'POST', body: JSON.stringify(rule) });
  }
  async clearFaults(): Promise<void> {
    await this.control('faults', { method: 'DELETE' });
  }
  async requests(): Promise<RecordedRequest[]> {
    const body = (await (await this.control('requests')).json()) as
      RecordedRequest[] | { requests: RecordedRequest[] };
    return Array.isArray(body) ? body : body.requests;
  }
  get alive(): boolean {
    return this.child.exitCode === null;
  }
  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await exited;
  }
}

/** A logger that keeps counts and a few error lines, not every line (that would grow the heap). */
class CountingLogger implements LoggerService {
  errors = 0;
  samples: string[] = [];
  log(): void {}
  warn(): void {}
  debug(): void {}
  verbose(): void {}
  error(message: unknown, ...rest: unknown[]): void {
    this.errors++;
    const text = `${typeof message === 'string' ? message : JSON.stringify(message)} ${rest.map((r) => String(r)).join(' ')}`;
    const known = this.samples.some((s) => s.slice(0, 60) === text.slice(0, 60));
    if (!known && this.samples.length < 12) this.samples.push(text.slice(0, 300));
  }
}

/** heapUsed after a full GC (MB). */
function heapMb(): number {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  gc();
  return Math.round((process.memoryUsage().heapUsed / 1048576) * 10) / 10;
}

const userTag = (content: unknown) => /\[soak:(u\d+)\]/.exec(JSON.stringify(content))?.[1];

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  const log = o.log ?? (() => undefined);
  const unhandled: string[] = [];
  const onUnhandled = (err: unknown) => unhandled.push(String((err as Error)?.stack ?? err).slice(0, 400));
  process.on('unhandledRejection', onUnhandled);
  process.on('uncaughtException', onUnhandled);

  const redis = await PersistentRedis.start();
  const upstream = await UpstreamProcess.start();
  const users = Array.from({ length: o.users }, (_, i) => `u${String(i).padStart(3, '0')}`);
  const env = {
    NODE_ENV: 'production', // storage.onFailure 'fail-closed': no budget is spent uncounted while Redis is down
    REDIS_URL: redis.url,
    SAMPLE_USERS: users.map((u) => `${u}:tok-${u}`).join(','),
    RATE_LIMIT_RPM: '100000',
    MODERATION: 'off',
    BUDGET_USD_DAILY: String(o.budgetUsd),
    OPENAI_MAX_RETRIES: '2',
    OPENAI_TIMEOUT_MS: '5000',
  };
  const loggers: CountingLogger[] = [];
  const apps: INestApplication[] = [];
  const urls: string[] = [];
  for (const platform of ['express', 'fastify'] as const) {
    const logger = new CountingLogger();
    const config = readSampleConfig(
      { ...env, SAMPLE_PLATFORM: platform },
      { apiKey: 'sk-soak', baseURL: upstream.baseURL },
    );
    const app = await createSampleApp(config, logger);
    await app.listen(0, '127.0.0.1');
    loggers.push(logger);
    apps.push(app);
    urls.push((await app.getUrl()).replace('[::1]', '127.0.0.1'));
  }

  const report: SoakReport = {
    seconds: o.seconds,
    clientRequests: 0,
    byStatus: {},
    streamsAborted: 0,
    upstreamRequests: 0,
    faults: {},
    upstreamAnswered: 0,
    ledgerRequests: 0,
    ledgerMismatches: [],
    overspent: [],
    budgetRefusals: 0,
    maxUserSpendUsd: 0,
    redisRestartedAtS: 0,
    redisDownMs: 0,
    unhandled,
    errorLogs: 0,
    errorSamples: [],
    heapMb: [],
    heapPlateau: false,
    healthAfter: [],
  };
  const started = Date.now();
  const end = started + o.seconds * 1000;
  const count = (status: string) => (report.byStatus[status] = (report.byStatus[status] ?? 0) + 1);

  async function client(user: string, n: number): Promise<void> {
    for (let i = 0; Date.now() < end; i++) {
      const url = urls[(n + i) % urls.length];
      const kind = Math.random();
      const stream = kind < 0.4;
      const abort = kind < 0.12;
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), 20_000);
      try {
        const res = await fetch(`${url}/chat${stream ? '/stream' : ''}`, {
          method: 'POST',
          headers: { authorization: `Bearer tok-${user}`, 'content-type': 'application/json' },
          body: JSON.stringify({
            messages: [
              { role: 'user', content: `[soak:${user}] message ${i} ${'word '.repeat(rnd(1, 30))}` },
            ],
          }),
          signal: ac.signal,
        });
        report.clientRequests++;
        count(String(res.status));
        if (!res.ok) {
          if ((await res.text()).includes('budget_exceeded')) {
            report.budgetRefusals++;
            await sleep(200); // a refused user does not spin
          }
        } else if (stream && res.body) {
          const reader = res.body.getReader();
          // Abort only after the first bytes: the call has then reached the upstream and is settled.
          const first = await reader.read();
          if (abort && !first.done) {
            ac.abort();
            report.streamsAborted++;
          } else while (!(await reader.read()).done);
        } else await res.arrayBuffer();
      } catch (err) {
        if (!ac.signal.aborted) count(`client error: ${(err as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
      await sleep(rnd(5, 40));
    }
  }

  const faultKinds: Array<[string, () => FaultRule]> = [
    ['429 retry-after-ms', () => ({ status: 429, retryAfterMs: rnd(20, 300), times: rnd(1, 3) })],
    ['500', () => ({ status: 500, times: rnd(1, 3) })],
    ['slow reply', () => ({ delayMs: rnd(200, 1500), times: rnd(1, 4) })],
    ['dropped connection', () => ({ drop: true, times: 1 })],
    ['cut stream', () => ({ streamCutAfterChunks: rnd(1, 3), times: rnd(1, 2) })],
    ['failed stream', () => ({ streamFailAfterChunks: rnd(1, 3), times: 1 })],
  ];
  async function faults(): Promise<void> {
    while (Date.now() < end - 1000) {
      const [, make] = faultKinds[rnd(0, faultKinds.length - 1)];
      await upstream.fault({ path: CHAT, ...make() }).catch(() => undefined);
      await sleep(rnd(100, 400));
    }
    await upstream.clearFaults();
  }
  async function redisBlip(): Promise<void> {
    await sleep(o.seconds * 400);
    report.redisRestartedAtS = Math.round((Date.now() - started) / 100) / 10;
    const down = Date.now();
    await redis.kill();
    log(`soak: Redis killed at ${report.redisRestartedAtS} s`);
    await sleep(Math.min(3000, o.seconds * 100));
    await redis.start();
    report.redisDownMs = Date.now() - down;
    log(`soak: Redis back after ${report.redisDownMs} ms`);
  }
  async function heap(): Promise<void> {
    while (Date.now() < end) {
      report.heapMb.push(heapMb());
      await sleep(2000);
    }
  }
  async function progress(): Promise<void> {
    for (;;) {
      await sleep(10_000);
      if (Date.now() >= end) return;
      log(
        `soak: ${Math.round((Date.now() - started) / 1000)} s, ${report.clientRequests} requests, ${JSON.stringify(report.byStatus)}`,
      );
    }
  }

  try {
    await Promise.all([...users.map((u, n) => client(u, n)), faults(), redisBlip(), heap(), progress()]);
    // Let retries of the ledger land (Redis came back mid-run), then write what is left.
    for (const app of apps) await app.get(UsageService).flush();
    for (const url of urls) report.healthAfter.push((await fetch(`${url}/health`)).status);

    const recorded = (await upstream.requests()).filter((r) => r.path === CHAT);
    report.upstreamRequests = recorded.length;
    const expected = new Map<string, number>();
    for (const r of recorded) {
      const f = r.fault;
      const kind = !f
        ? 'none'
        : f.status
          ? String(f.status)
          : f.drop
            ? 'dropped connection'
            : f.delayMs
              ? 'slow reply'
              : f.streamCutAfterChunks
                ? 'cut stream'
                : 'failed stream';
      report.faults[kind] = (report.faults[kind] ?? 0) + 1;
      // Answered with a 200 (streams possibly cut after it): settled once, so in the ledger once.
      if (f?.status || f?.drop) continue;
      const user = userTag(r.body?.messages);
      if (user) expected.set(user, (expected.get(user) ?? 0) + 1);
      report.upstreamAnswered++;
    }
    const usage = apps[0].get(UsageService);
    for (const user of users) {
      const t = await usage.totals(user, 'day');
      report.ledgerRequests += t.requests;
      report.maxUserSpendUsd = Math.max(report.maxUserSpendUsd, t.cost_usd);
      if (t.requests !== (expected.get(user) ?? 0))
        report.ledgerMismatches.push([user, t.requests, expected.get(user) ?? 0]);
      if (t.cost_usd > o.budgetUsd + 1e-9) report.overspent.push([user, t.cost_usd]);
    }
    report.errorLogs = loggers.reduce((n, l) => n + l.errors, 0);
    report.errorSamples = loggers.flatMap((l) => l.samples);
    // Plateau: the last third of the samples stays within 25% (and 8 MB) of the middle third.
    const h = report.heapMb;
    const third = Math.max(1, Math.floor(h.length / 3));
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const mid = mean(h.slice(third, 2 * third));
    const last = mean(h.slice(2 * third));
    report.heapPlateau = h.length < 3 || last <= Math.max(mid * 1.25, mid + 8);
  } finally {
    for (const app of apps) await app.close().catch(() => undefined);
    await upstream.close();
    await redis.close();
    process.off('unhandledRejection', onUnhandled);
    process.off('uncaughtException', onUnhandled);
  }
  return report;
}

/** The report as text. */
export function formatSoakReport(r: SoakReport): string {
  const ok = (b: boolean) => (b ? 'ok  ' : 'FAIL');
  return [
    `soak: ${r.seconds} s, ${r.clientRequests} client requests, ${r.streamsAborted} streams aborted by the client`,
    `  client statuses: ${JSON.stringify(r.byStatus)}`,
    `  upstream: ${r.upstreamRequests} chat requests, faults ${JSON.stringify(r.faults)}`,
    `  Redis killed at ${r.redisRestartedAtS} s, back after ${r.redisDownMs} ms (AOF, appendfsync always)`,
    `${ok(r.unhandled.length === 0)} no unhandled rejection or exception (${r.unhandled.length}); /health after: ${r.healthAfter.join(', ')}`,
    `${ok(r.ledgerMismatches.length === 0 && r.ledgerRequests === r.upstreamAnswered)} usage ledger ${r.ledgerRequests} requests = upstream answered ${r.upstreamAnswered}${r.ledgerMismatches.length ? `; mismatches [user, ledger, upstream]: ${JSON.stringify(r.ledgerMismatches.slice(0, 10))}` : ''}`,
    `${ok(r.overspent.length === 0)} no budget overspent (most spent by a user: $${r.maxUserSpendUsd.toFixed(6)}; ${r.budgetRefusals} budget refusals)`,
    `${ok(r.heapPlateau)} heap at a plateau: ${r.heapMb.join(' ')} MB`,
    `  error log lines: ${r.errorLogs}${r.errorSamples.length ? `, e.g.\n    ${r.errorSamples.join('\n    ')}` : ''}`,
  ].join('\n');
}
