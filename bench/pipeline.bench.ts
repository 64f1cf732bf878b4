// The pipeline benchmark: `npm run bench` (compiles bench/ and lib/, then runs this file).
// A. in-process added latency of OpenAIService.chat() over the raw SDK call;
// B. HTTP with autocannon: /raw, /service, /guarded, memory and Redis stores, 1 and 10 connections;
// C. Redis commands per /guarded request.
// See bench/README.md. BENCH_QUICK=1 runs a short version (numbers not for publishing).
import 'reflect-metadata';
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { runInProcess, type VariantResult } from './support/in-process.js';
import { AppProcess, cannon, checkRoute, measure, type CannonRun } from './support/http.js';
import { redisCommands, type RedisCommandReport } from './support/redis-commands.js';
import { BenchRedis } from './support/redis-server.js';
import { ms3, table, us } from './support/stats.js';

const QUICK = process.env.BENCH_QUICK === '1';
const SETTINGS = {
  inProcess: QUICK ? { warmup: 100, calls: 500, block: 50 } : { warmup: 300, calls: 3_000, block: 100 },
  warmupS: 1,
  durationS: QUICK ? 2 : 5,
  connections: [1, 10],
  redisRequests: QUICK ? 500 : 2_000,
  monitored: 20,
};

interface RouteSpec {
  label: string;
  port: 'lib' | 'bare';
  path: string;
}

interface RouteRun extends RouteSpec {
  connections: number;
  run: CannonRun;
}

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

function machine(): string[] {
  const model =
    /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model ?? 'unknown';
  const pkg = (name: string) => {
    try {
      return (
        JSON.parse(readFileSync(join(process.cwd(), 'node_modules', name, 'package.json'), 'utf8')) as {
          version: string;
        }
      ).version;
    } catch {
      return '?';
    }
  };
  return [
    `- CPUs (availableParallelism): ${availableParallelism()}; CPU: ${model}`,
    `- Node ${process.version} (${process.platform} ${process.arch}); openai ${pkg('openai')}, @nestjs/core ${pkg('@nestjs/core')}, autocannon ${pkg('autocannon')}, ioredis ${pkg('ioredis')}`,
    `- load average at start (1/5/15 min): ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' / ')}`,
    `- ${new Date().toISOString()}${QUICK ? ' — BENCH_QUICK=1 (short run, not for publishing)' : ''}`,
  ];
}

function partA(results: VariantResult[]): string {
  const base = results[0]!;
  const rows = results.map((r, i) => [
    r.name,
    r.summary.n,
    us(r.summary.p50),
    us(r.summary.p99),
    us(r.summary.mean),
    i === 0 ? '—' : us(r.summary.p50 - base.summary.p50, true),
    i === 0 ? '—' : us(r.summary.p99 - base.summary.p99, true),
    i === 0 ? '—' : us(r.summary.mean - base.summary.mean, true),
    us(r.cpuPerCallMs),
    i === 0 ? '—' : us(r.cpuPerCallMs - base.cpuPerCallMs, true),
  ]);
  return table(
    [
      'variant',
      'calls',
      'p50 µs',
      'p99 µs',
      'mean µs',
      'added p50 µs',
      'added p99 µs',
      'added mean µs',
      'CPU µs/call',
      'added CPU µs/call',
    ],
    rows,
  );
}

async function partB(app: AppProcess, routes: RouteSpec[], storage: string): Promise<RouteRun[]> {
  const out: RouteRun[] = [];
  const url = (r: RouteSpec) => `http://127.0.0.1:${app.ports[r.port]}${r.path}`;
  for (const r of routes) {
    await checkRoute(url(r));
    log(`${storage} ${r.label}: warm-up ${SETTINGS.warmupS} s`);
    await cannon(url(r), 1, { duration: SETTINGS.warmupS });
  }
  for (const connections of SETTINGS.connections) {
    // The baseline is measured first and again last: its drift over the runs is shown, and the added
    // latency is taken against the mean of the two.
    for (const r of [...routes, routes.find((x) => x.path === '/raw' && x.port === 'lib')!]) {
      log(`${storage} ${r.label}: ${connections} connection(s), ${SETTINGS.durationS} s`);
      out.push({ ...r, connections, run: await measure(app, url(r), connections, SETTINGS.durationS) });
    }
  }
  return out;
}

function partBTable(runs: RouteRun[]): string {
  const rows: Array<Array<string | number>> = [];
  for (const connections of SETTINGS.connections) {
    const at = runs.filter((r) => r.connections === connections);
    const raws = at.filter((r) => r.port === 'lib' && r.path === '/raw');
    const mean = (f: (r: RouteRun) => number) => raws.reduce((s, r) => s + f(r), 0) / raws.length;
    const base = {
      p50: mean((r) => r.run.precise.p50),
      p99: mean((r) => r.run.precise.p99),
      cpu: mean((r) => r.run.cpuPerRequestMs),
      rps: mean((r) => r.run.rps),
    };
    let rawSeen = 0;
    for (const r of at) {
      const isRaw = r.port === 'lib' && r.path === '/raw';
      const label = isRaw ? (rawSeen++ === 0 ? r.label : `${r.label} (again, drift check)`) : r.label;
      const l = r.run.result.latency;
      rows.push([
        label,
        connections,
        Math.round(r.run.rps),
        isRaw ? '—' : `${(((r.run.rps - base.rps) / base.rps) * 100).toFixed(1)}%`,
        `${l.p50} / ${l.p99}`,
        `${ms3(r.run.precise.p50)} / ${ms3(r.run.precise.p99)}`,
        isRaw ? '—' : `${us(r.run.precise.p50 - base.p50, true)} / ${us(r.run.precise.p99 - base.p99, true)}`,
        us(r.run.cpuPerRequestMs),
        isRaw ? '—' : us(r.run.cpuPerRequestMs - base.cpu, true),
      ]);
    }
  }
  return table(
    [
      'route',
      'conn.',
      'req/s',
      'req/s vs /raw',
      'autocannon p50 / p99 ms',
      'precise p50 / p99 ms',
      'added p50 / p99 µs vs /raw',
      'app CPU µs/req',
      'added CPU µs/req',
    ],
    rows,
  );
}

function partC(r: RedisCommandReport): string {
  const onPath = r.clientCommands.filter((c) => c.onPath);
  const offPath = r.clientCommands.filter((c) => !c.onPath);
  const sum = (xs: Array<{ perRequest: number }>) => xs.reduce((s, x) => s + x.perRequest, 0);
  const lines = [
    `\`INFO commandstats\` delta over ${r.requests} sequential \`/guarded\` requests, per request (every command, those run inside Lua scripts included):`,
    '',
    table(
      ['command', 'calls per request'],
      r.stats.map((s) => [s.command, s.perRequest.toFixed(2)]),
    ),
    '',
    `Client commands (round trips) per request, from MONITOR over ${r.monitored} requests, by what they do:`,
    '',
    table(
      ['client command', 'path', 'per request'],
      r.clientCommands.map((c) => [
        c.what,
        c.onPath ? 'request path (awaited)' : 'off path (not awaited)',
        c.perRequest.toFixed(2),
      ]),
    ),
    '',
    `Total: ${sum(r.clientCommands).toFixed(2)} client commands per request — ${sum(onPath).toFixed(2)} on the request path, ${sum(offPath).toFixed(2)} off it.`,
    `Inside the scripts (no round trip of their own), per request: ${r.scriptCommands.map((c) => `${c.command} ${c.perRequest.toFixed(2)}`).join(', ')}.`,
  ];
  return lines.join('\n');
}

async function main(): Promise<void> {
  const started = Date.now();
  const load = loadavg()[0]!;
  if (load > availableParallelism() * 0.5) {
    log(
      `WARNING: load average ${load.toFixed(2)} on ${availableParallelism()} CPUs: other processes compete, the numbers will be noisy`,
    );
  }
  const out: string[] = ['# Pipeline benchmark', '', ...machine(), ''];
  log('starting redis-server');
  const redis = await BenchRedis.start();
  const children: AppProcess[] = [];
  try {
    log(
      `A. in-process: ${SETTINGS.inProcess.warmup} warm-up + ${SETTINGS.inProcess.calls} calls per variant`,
    );
    const a = await runInProcess(redis.url, SETTINGS.inProcess);
    out.push(
      '## A. In-process added latency (sequential calls, zero-delay fake upstream in the same process)',
      '',
      partA(a),
      '',
    );

    log('B. HTTP, memory store');
    const mem = await AppProcess.start('memory');
    children.push(mem);
    const memRuns = await partB(
      mem,
      [
        { label: '`/raw` in a bare Nest app (no OpenAIModule)', port: 'bare', path: '/raw' },
        { label: '`/raw`', port: 'lib', path: '/raw' },
        { label: '`/service`', port: 'lib', path: '/service' },
        { label: '`/guarded`', port: 'lib', path: '/guarded' },
      ],
      'memory',
    );
    await mem.stop();

    log('B. HTTP, Redis store');
    const red = await AppProcess.start('redis', redis.url);
    children.push(red);
    const redisRuns = await partB(
      red,
      [
        { label: '`/raw`', port: 'lib', path: '/raw' },
        { label: '`/service`', port: 'lib', path: '/service' },
        { label: '`/guarded`', port: 'lib', path: '/guarded' },
      ],
      'redis',
    );
    out.push(
      `## B. HTTP with autocannon (Express; ${SETTINGS.durationS} s per run after a ${SETTINGS.warmupS} s warm-up per route)`,
      '',
      '### Memory store',
      '',
      partBTable(memRuns),
      '',
      '### Redis store',
      '',
      partBTable(redisRuns),
      '',
    );

    log('C. Redis commands per /guarded request');
    const admin = redis.client();
    const monitorClient = redis.client();
    try {
      const c = await redisCommands(
        admin,
        monitorClient,
        `http://127.0.0.1:${red.ports.lib}/guarded`,
        SETTINGS.redisRequests,
        SETTINGS.monitored,
      );
      out.push('## C. Redis round trips per `/guarded` request', '', partC(c), '');
    } finally {
      admin.disconnect();
      monitorClient.disconnect();
    }
    await red.stop();
  } finally {
    for (const c of children) await c.stop();
    await redis.stop();
  }
  out.push(
    `Total bench time: ${Math.round((Date.now() - started) / 1000)} s; load average at the end: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' / ')}.`,
  );
  const text = out.join('\n');
  process.stdout.write(`${text}\n`);
  const dir = join(__dirname, '..', 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'results.md'), `${text}\n`);
  log(`written to ${join(dir, 'results.md')}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
