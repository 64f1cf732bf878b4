import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { BODY, EXPECTED_CONTENT } from './options.js';
import { Samples } from './stats.js';

/** One autocannon run of one route. */
export interface CannonRun {
  /** autocannon's own numbers. */
  result: autocannon.Result;
  /** Every response's latency (ms, from autocannon's per-response `hrtime` duration), for µs-precision percentiles. */
  samples: Float64Array;
  /** 2xx responses. */
  ok: number;
  /** CPU time of the app process (the Nest app and the fake upstream) during the run (ms). */
  cpuMs: number;
}

/** One app child process (see http-app.ts). */
export class AppProcess {
  private constructor(
    private readonly child: ChildProcess,
    readonly ports: { lib: number; bare?: number },
  ) {}

  static async start(
    mode: 'memory' | 'redis' | 'gateway',
    redisUrl?: string,
    env: Record<string, string> = {},
  ): Promise<AppProcess> {
    const child = fork(join(__dirname, 'http-app.js'), [mode], {
      env: { ...process.env, ...(redisUrl ? { REDIS_URL: redisUrl } : {}), ...env },
      execArgv: (process.env.BENCH_CHILD_NODE_OPTIONS ?? '').split(' ').filter(Boolean),
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const ports = await new Promise<{ lib: number; bare?: number }>((resolve, reject) => {
      child.once('exit', (code) =>
        reject(new Error(`bench app (${mode}) exited with code ${code} before it was ready`)),
      );
      child.on('message', (m: { ready?: { lib: number; bare?: number } }) => {
        if (m.ready) resolve(m.ready);
      });
    });
    child.removeAllListeners('exit');
    return new AppProcess(child, ports);
  }

  private ask<T>(cmd: string, key: string): Promise<T> {
    return new Promise<T>((resolve) => {
      const onMessage = (m: Record<string, unknown>) => {
        if (key in m) {
          this.child.off('message', onMessage);
          resolve(m[key] as T);
        }
      };
      this.child.on('message', onMessage);
      this.child.send({ cmd });
    });
  }

  cpu(): Promise<NodeJS.CpuUsage> {
    return this.ask('cpu', 'cpu');
  }

  reset(): Promise<void> {
    return this.ask('reset', 'reset');
  }

  /** Starts a V8 CPU profile of the app process (100 µs sampling). */
  async profileStart(): Promise<void> {
    await this.ask('prof-start', 'prof');
  }

  /** Stops the profile and writes it (a `.cpuprofile`) to `file`. */
  async profileStop(file: string): Promise<void> {
    await new Promise<void>((resolve) => {
      const onMessage = (m: Record<string, unknown>) => {
        if ('prof' in m) {
          this.child.off('message', onMessage);
          resolve();
        }
      };
      this.child.on('message', onMessage);
      this.child.send({ cmd: 'prof-stop', file });
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.send({ cmd: 'stop' });
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

/** Runs autocannon once (duration in s, or a fixed amount of requests) and records every response's latency. */
export function cannon(
  url: string,
  connections: number,
  run: { duration: number } | { amount: number },
): Promise<{ result: autocannon.Result; samples: Samples }> {
  const samples = new Samples(65_536);
  return new Promise((resolve, reject) => {
    const instance = autocannon(
      {
        url,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: BODY,
        connections,
        pipelining: 1,
        timeout: 10,
        ...run,
      },
      (err, result) => (err ? reject(err) : resolve({ result, samples })),
    );
    instance.on('response', (_client: unknown, _status: number, _bytes: number, responseTime: number) =>
      samples.push(responseTime),
    );
  });
}

/** Checks one request's answer before a route is measured (so a broken route is not benchmarked as fast 4xx/5xx). */
export async function checkRoute(url: string): Promise<void> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: BODY,
  });
  const text = await res.text();
  if (res.status !== 200 || (JSON.parse(text) as { content?: string }).content !== EXPECTED_CONTENT) {
    throw new Error(`${url} answered ${res.status}: ${text.slice(0, 300)}`);
  }
}

/** A measured autocannon run against one route of `app`, with the app process's CPU time; any non-2xx fails the bench. */
export async function measure(
  app: AppProcess,
  url: string,
  connections: number,
  duration: number,
): Promise<CannonRun> {
  const before = await app.cpu();
  const { result, samples } = await cannon(url, connections, { duration });
  const after = await app.cpu();
  const bad = result.non2xx + result.errors + result.timeouts;
  if (bad > 0) {
    throw new Error(
      `${url} at ${connections} connections: ${result.non2xx} non-2xx, ${result.errors} errors, ${result.timeouts} timeouts`,
    );
  }
  const cpuMs = (after.user - before.user + after.system - before.system) / 1000;
  return { result, samples: samples.values(), ok: result['2xx'], cpuMs };
}
