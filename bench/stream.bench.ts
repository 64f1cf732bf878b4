// Section E of the bench alone: what OpenAIService.stream() and streamResponse() add to a streamed call
// (time to first chunk, per-chunk latency, CPU per chunk) against the plain SDK client. See
// support/streaming.ts and bench/README.md ("Streaming"). Compiled by `npm run bench`; run alone:
//   node bench/dist/bench/stream.bench.js [calls] [streams] [--chunks <n>] [--only <text>] [--profile <dir>]
//   calls: time-to-first-chunk calls per variant (default 2000); streams: per-chunk streams per variant
//   (default 120); --chunks: content chunks per stream (default 50); --only: the variants whose name
//   contains <text>; --profile: a CPU profile of each part's measured calls (no warm-up, no start-up)
//   in <dir>/ttfb.cpuprofile and <dir>/chunks.cpuprofile, for support/cpuprofile-diff.js (see README).
//   BENCH_QUICK=1: a short run for checking the bench itself.
import 'reflect-metadata';
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import {
  runStreaming,
  streamingReport,
  STREAMING_DEFAULTS,
  STREAMING_QUICK,
  type StreamingSettings,
} from './support/streaming.js';

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const loads = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' / ');

function settings(): StreamingSettings {
  const s = structuredClone(process.env.BENCH_QUICK === '1' ? STREAMING_QUICK : STREAMING_DEFAULTS);
  const args = process.argv.slice(2);
  const flag = (name: string): string | undefined => {
    const at = args.indexOf(name);
    if (at < 0) return undefined;
    const value = args[at + 1];
    if (!value) throw new Error(`${name} needs a value`);
    args.splice(at, 2);
    return value;
  };
  s.only = flag('--only');
  s.profileDir = flag('--profile');
  const chunks = flag('--chunks');
  if (chunks !== undefined) {
    s.chunks = Number(chunks);
    if (!Number.isInteger(s.chunks) || s.chunks < 1)
      throw new Error(`--chunks: a positive integer, not ${chunks}`);
  }
  const [calls, streams] = args.map(Number);
  if (calls !== undefined) {
    if (!Number.isInteger(calls) || calls < 1) throw new Error(`calls: a positive integer, not ${calls}`);
    s.ttfb.calls = calls;
  }
  if (streams !== undefined) {
    if (!Number.isInteger(streams) || streams < 1)
      throw new Error(`streams: a positive integer, not ${streams}`);
    s.perChunk.streams = streams;
  }
  return s;
}

async function main(): Promise<void> {
  const started = Date.now();
  const s = settings();
  const load = loadavg()[0]!;
  if (load > availableParallelism() * 0.5)
    log(
      `WARNING: load average ${load.toFixed(2)} on ${availableParallelism()} CPUs: other processes compete, the numbers will be noisy`,
    );
  const head = [
    `- Node ${process.version}; load average at start (1/5/15 min): ${loads()}; ${new Date().toISOString()}${process.env.BENCH_QUICK === '1' ? ' — BENCH_QUICK=1 (short run, not for publishing)' : ''}`,
  ];
  const result = await runStreaming(s);
  const text = [
    '# Streaming benchmark',
    '',
    ...head,
    '',
    streamingReport(result),
    `Total: ${Math.round((Date.now() - started) / 1000)} s; load average at the end: ${loads()}.`,
  ].join('\n');
  process.stdout.write(`${text}\n`);
  const dir = join(__dirname, '..', 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'stream.md'), `${text}\n`);
  log(`written to ${join(dir, 'stream.md')}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
