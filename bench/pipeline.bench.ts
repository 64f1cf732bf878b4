// The pipeline benchmark: `npm run bench` (compiles bench/ and lib/, then runs this file).
// A. in-process added latency of OpenAIService.chat() over the raw SDK call;
// B. HTTP with autocannon: /raw, /service, /guarded, memory and Redis stores, 1 and 10 connections;
// C. Redis commands per /guarded request;
// D. ours, bare and the Portkey gateway side by side;
// E. streaming: time to first chunk and per-chunk latency of stream() / streamResponse() (support/streaming.ts).
// See bench/README.md. BENCH_QUICK=1 runs a short version (numbers not for publishing).
import 'reflect-metadata';
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { runInProcess, type VariantResult } from './support/in-process.js';
import { GatewayProcess, UpstreamProcess } from './support/gateway.js';
import { AppProcess, cannon, checkRoute, measure } from './support/http.js';
import { redisCommands, type RedisCommandReport } from './support/redis-commands.js';
import { BenchRedis } from './support/redis-server.js';
import { ms3, percentile, Samples, summarize, table, us, type Summary } from './support/stats.js';
import { runStreaming, streamingReport, STREAMING_DEFAULTS, STREAMING_QUICK } from './support/streaming.js';

const QUICK = process.env.BENCH_QUICK === '1';
const SETTINGS = {
  inProcess: QUICK ? { warmup: 100, calls: 500, block: 50 } : { warmup: 300, calls: 3_000, block: 100 },
  warmupS: 1,
  /** Each route is measured in `rounds` runs of `roundS` seconds, interleaved with the other routes. */
  rounds: QUICK ? 2 : 6,
  roundS: 1,
  connections: [1, 10],
  redisRequests: QUICK ? 500 : 2_000,
  monitored: 20,
  streaming: QUICK ? STREAMING_QUICK : STREAMING_DEFAULTS,
};

interface RouteSpec {
  label: string;
  port: 'lib' | 'bare';
  path: string;
}

interface RouteResult extends RouteSpec {
  connections: number;
  /** µs-precision percentiles of every response of every round. */
  precise: Summary;
  /** 2xx responses per second over all rounds. */
  rps: number;
  /** CPU of the app process per request (ms). */
  cpuPerRequestMs: number;
  /** autocannon's own p50 and p99 (ms, integer resolution), median over the rounds. */
  autocannonP50: number;
  autocannonP99: number;
  /** Precise p50 of each round (ms): its spread shows the noise. */
  roundP50s: number[];
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

const median = (xs: number[]) => percentile(Float64Array.from(xs).sort(), 50);

async function partB(
  app: AppProcess,
  routes: RouteSpec[],
  storage: string,
  connectionCounts: number[] = SETTINGS.connections,
): Promise<RouteResult[]> {
  const out: RouteResult[] = [];
  const url = (r: RouteSpec) => `http://127.0.0.1:${app.ports[r.port]}${r.path}`;
  for (const r of routes) {
    await checkRoute(url(r));
    log(`${storage} ${r.label}: warm-up ${SETTINGS.warmupS} s`);
    await cannon(url(r), 1, { duration: SETTINGS.warmupS });
  }
  for (const connections of connectionCounts) {
    log(
      `${storage}, ${connections} connection(s): ${SETTINGS.rounds} rounds of ${SETTINGS.roundS} s per route, interleaved`,
    );
    const acc = routes.map((r) => ({
      r,
      samples: new Samples(65_536),
      ok: 0,
      seconds: 0,
      cpuMs: 0,
      p50: [] as number[],
      p99: [] as number[],
      roundP50s: [] as number[],
    }));
    for (let round = 0; round < SETTINGS.rounds; round++) {
      for (let i = 0; i < acc.length; i++) {
        // The order rotates each round, so drift during the runs spreads over every route.
        const a = acc[(i + round) % acc.length]!;
        await app.reset();
        const run = await measure(app, url(a.r), connections, SETTINGS.roundS);
        for (const v of run.samples) a.samples.push(v);
        a.ok += run.ok;
        a.seconds += run.result.duration;
        a.cpuMs += run.cpuMs;
        a.p50.push(run.result.latency.p50);
        a.p99.push(run.result.latency.p99);
        a.roundP50s.push(percentile(Float64Array.from(run.samples).sort(), 50));
      }
    }
    for (const a of acc) {
      out.push({
        ...a.r,
        connections,
        precise: summarize(a.samples.values()),
        rps: a.ok / a.seconds,
        cpuPerRequestMs: a.cpuMs / a.ok,
        autocannonP50: median(a.p50),
        autocannonP99: median(a.p99),
        roundP50s: a.roundP50s,
      });
    }
  }
  return out;
}

/** Added p50 at 1 connection and requests/s at 16 connections, each against `/raw` of the same run. */
function gatewaySummary(runs: RouteResult[]): string {
  const at = (c: number, path: string) => runs.find((r) => r.connections === c && r.path === path)!;
  const rows = ['/guarded', '/gateway'].map((path) => {
    const one = at(1, path);
    const many = at(16, path);
    const base1 = at(1, '/raw');
    const base16 = at(16, '/raw');
    return [
      path === '/guarded' ? 'ours (`/guarded`)' : 'Portkey gateway (`/gateway`)',
      us(one.precise.p50 - base1.precise.p50, true),
      `${Math.round(many.rps)} (${((many.rps / base16.rps) * 100).toFixed(0)}% of /raw's ${Math.round(base16.rps)})`,
      us(one.cpuPerRequestMs - base1.cpuPerRequestMs, true),
    ];
  });
  return table(
    ['', 'added p50 at 1 conn., µs', 'req/s at 16 conn. (vs /raw)', 'added app CPU µs/req (1 conn.)'],
    rows,
  );
}

function partBTable(runs: RouteResult[]): string {
  const rows: Array<Array<string | number>> = [];
  for (const connections of [...new Set(runs.map((r) => r.connections))]) {
    const at = runs.filter((r) => r.connections === connections);
    const base = at.find((r) => r.port === 'lib' && r.path === '/raw')!;
    for (const r of at) {
      const isBase = r === base;
      const spread = `${ms3(Math.min(...r.roundP50s))}–${ms3(Math.max(...r.roundP50s))}`;
      rows.push([
        r.label,
        connections,
        Math.round(r.rps),
        isBase ? '—' : `${(((r.rps - base.rps) / base.rps) * 100).toFixed(1)}%`,
        `${r.autocannonP50} / ${r.autocannonP99}`,
        `${ms3(r.precise.p50)} / ${ms3(r.precise.p99)}`,
        isBase
          ? '—'
          : `${us(r.precise.p50 - base.precise.p50, true)} / ${us(r.precise.p99 - base.precise.p99, true)}`,
        spread,
        us(r.cpuPerRequestMs),
        isBase ? '—' : us(r.cpuPerRequestMs - base.cpuPerRequestMs, true),
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
      'p50 range over rounds, ms',
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
    `For scale, one bare round trip on this machine (sequential PING from another ioredis client): p50 ${us(r.ping.wall.p50)} µs, p99 ${us(r.ping.wall.p99)} µs, ${us(r.ping.cpuMs)} µs of client CPU.`,
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
      `## B. HTTP with autocannon (Express; per route and connection count ${SETTINGS.rounds} runs of ${SETTINGS.roundS} s interleaved with the other routes, after a ${SETTINGS.warmupS} s warm-up)`,
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

    log('D. the same call through the Portkey gateway (upstream and gateway in processes of their own)');
    const upstream = await UpstreamProcess.start();
    let gateway: GatewayProcess | undefined;
    try {
      gateway = await GatewayProcess.start();
      const gw = await AppProcess.start('gateway', undefined, {
        BENCH_UPSTREAM: upstream.baseURL,
        BENCH_GATEWAY: gateway.url,
      });
      children.push(gw);
      const gwRuns = await partB(
        gw,
        [
          { label: '`/raw` (bare: SDK client to the upstream)', port: 'lib', path: '/raw' },
          {
            label: '`/guarded` (ours: guard, pipe, limits, budgets, usage; memory)',
            port: 'lib',
            path: '/guarded',
          },
          {
            label: `\`/gateway\` (SDK client through Portkey gateway ${gateway.version})`,
            port: 'lib',
            path: '/gateway',
          },
        ],
        'gateway',
        [1, 16],
      );
      await gw.stop();
      out.push(
        `## D. Ours, bare and a gateway side by side (Express app, memory store; the fake upstream and the Portkey gateway ${gateway.version} each in a process of their own, on loopback; ${SETTINGS.rounds} interleaved rounds of ${SETTINGS.roundS} s per route)`,
        '',
        gatewaySummary(gwRuns),
        '',
        partBTable(gwRuns),
        '',
      );
    } catch (err) {
      out.push(
        '## D. Against a gateway',
        '',
        `The Portkey gateway could not be measured: ${(err as Error).message}`,
        '',
      );
      log(`D failed: ${(err as Error).message}`);
    } finally {
      await gateway?.stop();
      await upstream.stop();
    }

    log('E. streaming (the fake upstream in a child process)');
    out.push(streamingReport(await runStreaming(SETTINGS.streaming)));
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
