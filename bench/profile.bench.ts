// Where the app's CPU goes per request, route against route: the bench app (support/http-app.ts, Express,
// memory store, production profile) profiled through node:inspector, autocannon on one route at a time, the fake
// upstream in a process of its own. The two profiles' self time per function, divided by the requests
// served, are subtracted: every microsecond `/guarded` adds over `/raw` is named by function.
//   npm run bench   # compiles; or: npx tsc -p bench/tsconfig.json
//   node bench/dist/bench/profile.bench.js [seconds=10] [connections=16] [top=40]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { diffTables, selfTimes } from './support/cpuprofile-diff.js';
import { UpstreamProcess } from './support/gateway.js';
import { AppProcess, cannon, checkRoute } from './support/http.js';

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
  const upstream = await UpstreamProcess.start();
  try {
    const runs: Record<string, { file: string; ok: number; dir: string }> = {};
    for (const route of ['raw', 'guarded']) {
      process.stderr.write(`profiling /${route} (${seconds} s at ${connections} connections)...\n`);
      runs[route] = await profileRoute(route, upstream.baseURL, seconds, connections);
    }
    console.log(
      diffTables(selfTimes(runs.raw.file), runs.raw.ok, selfTimes(runs.guarded.file), runs.guarded.ok, top, [
        '/raw',
        '/guarded',
      ]),
    );
    for (const r of Object.values(runs)) rmSync(r.dir, { recursive: true, force: true });
  } finally {
    await upstream.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
