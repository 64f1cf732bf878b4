// Where the app's CPU goes per request, route against route: the bench app (support/http-app.ts, Express,
// memory store, production profile) under `node --cpu-prof`, autocannon on one route at a time, the fake
// upstream in a process of its own. The two profiles' self time per function, divided by the requests
// served, are subtracted: every microsecond `/guarded` adds over `/raw` is named by function.
//   npm run bench   # compiles; or: npx tsc -p bench/tsconfig.json
//   node bench/dist/bench/profile.bench.js [seconds=10] [connections=16] [top=40]
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AppProcess, cannon, checkRoute } from './support/http.js';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Package, or file of this repository, a profile URL belongs to. */
function where(url: string): string {
  if (!url) return '(V8 / native)';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1]!;
  const own = /\/(lib|bench|sample)\/(.+)$/.exec(url);
  if (own) return `${own[1]}/${own[2]!.replace(/^dist\//, '').replace(/\.js$/, '.ts')}`;
  return url.replace(/^file:\/\//, '');
}

/** Self time (µs) by function and by package/file, idle excluded. */
function selfTimes(file: string): { byFn: Map<string, number>; byPlace: Map<string, number>; busy: number } {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const byFn = new Map<string, number>();
  const byPlace = new Map<string, number>();
  let busy = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]!)!;
    const t = p.timeDeltas[i] ?? 0;
    const name = n.callFrame.functionName || '(anonymous)';
    if (name === '(idle)') continue;
    busy += t;
    const place = ['(garbage collector)', '(program)'].includes(name) ? name : where(n.callFrame.url);
    const fn = n.callFrame.url ? `${name} (${place}:${n.callFrame.lineNumber + 1})` : name;
    byFn.set(fn, (byFn.get(fn) ?? 0) + t);
    byPlace.set(place, (byPlace.get(place) ?? 0) + t);
  }
  return { byFn, byPlace, busy };
}

class Upstream {
  private constructor(
    private readonly child: ChildProcess,
    readonly baseURL: string,
  ) {}
  static async start(): Promise<Upstream> {
    const child = fork(join(__dirname, 'support', 'fake-upstream.js'), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: [],
    });
    const baseURL = await new Promise<string>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`fake upstream exited with code ${code}`)));
      child.once('message', (m: { baseURL: string }) => resolve(m.baseURL));
    });
    child.removeAllListeners('exit');
    return new Upstream(child, baseURL);
  }
  async close(): Promise<void> {
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.disconnect();
    await exited;
  }
}

/**
 * Profiles the app process while autocannon drives `route` (after a warm-up, so boot and first-call
 * work are outside the profile); returns the profile's file and the 2xx responses inside it.
 */
async function profileRoute(
  route: string,
  upstream: string,
  seconds: number,
  connections: number,
): Promise<{ file: string; ok: number; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), `bench-prof-${route}-`));
  // 'gateway' mode: the upstream in its own process; the `/gateway` route is not called here.
  const app = await AppProcess.start('gateway', undefined, {
    BENCH_UPSTREAM: upstream,
    BENCH_GATEWAY: 'http://127.0.0.1:9',
  });
  const url = `http://127.0.0.1:${app.ports.lib}/${route}`;
  try {
    await checkRoute(url);
    await cannon(url, connections, { duration: 3 }); // warm-up: JIT, caches, the lease
    await app.profileStart();
    const { result } = await cannon(url, connections, { duration: seconds });
    const file = join(dir, `${route}.cpuprofile`);
    await app.profileStop(file);
    const bad = result.non2xx + result.errors + result.timeouts;
    if (bad > 0) throw new Error(`${route}: ${bad} failed requests`);
    return { file, ok: result['2xx'], dir };
  } finally {
    await app.stop();
  }
}

async function main(): Promise<void> {
  const seconds = Number(process.argv[2] ?? 10);
  const connections = Number(process.argv[3] ?? 16);
  const top = Number(process.argv[4] ?? 40);
  const upstream = await Upstream.start();
  try {
    const runs: Record<string, { file: string; ok: number; dir: string }> = {};
    for (const route of ['raw', 'guarded']) {
      process.stderr.write(`profiling /${route} (${seconds} s at ${connections} connections)...\n`);
      runs[route] = await profileRoute(route, upstream.baseURL, seconds, connections);
    }
    const raw = selfTimes(runs.raw.file);
    const ours = selfTimes(runs.guarded.file);
    const perReq = (t: number | undefined, ok: number) => (t ?? 0) / ok;
    const rawTotal = raw.busy / runs.raw.ok;
    const oursTotal = ours.busy / runs.guarded.ok;
    const lines: string[] = [];
    lines.push(
      `App CPU per request (profiled busy time / 2xx responses): ` +
        `/raw ${rawTotal.toFixed(0)} µs, /guarded ${oursTotal.toFixed(0)} µs, added ${(oursTotal - rawTotal).toFixed(0)} µs`,
      '',
      '| package / file | /raw µs/req | /guarded µs/req | added µs/req |',
      '| --- | ---: | ---: | ---: |',
    );
    const places = new Set([...raw.byPlace.keys(), ...ours.byPlace.keys()]);
    const rows = [...places]
      .map((k) => {
        const a = perReq(raw.byPlace.get(k), runs.raw.ok);
        const b = perReq(ours.byPlace.get(k), runs.guarded.ok);
        return { k, a, b, d: b - a };
      })
      .sort((x, y) => y.d - x.d);
    for (const r of rows.slice(0, top))
      lines.push(
        `| ${r.k} | ${r.a.toFixed(1)} | ${r.b.toFixed(1)} | ${r.d >= 0 ? '+' : ''}${r.d.toFixed(1)} |`,
      );
    lines.push(
      '',
      '| function (self time) | /raw µs/req | /guarded µs/req | added µs/req |',
      '| --- | ---: | ---: | ---: |',
    );
    const fns = new Set([...raw.byFn.keys(), ...ours.byFn.keys()]);
    const frows = [...fns]
      .map((k) => {
        const a = perReq(raw.byFn.get(k), runs.raw.ok);
        const b = perReq(ours.byFn.get(k), runs.guarded.ok);
        return { k, a, b, d: b - a };
      })
      .sort((x, y) => y.d - x.d);
    for (const r of frows.slice(0, top))
      lines.push(
        `| ${r.k} | ${r.a.toFixed(1)} | ${r.b.toFixed(1)} | ${r.d >= 0 ? '+' : ''}${r.d.toFixed(1)} |`,
      );
    console.log(lines.join('\n'));
    for (const r of Object.values(runs)) rmSync(r.dir, { recursive: true, force: true });
  } finally {
    await upstream.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
