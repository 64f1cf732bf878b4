// Cost of one limit check with sliding windows (lib/storage/sliding-window.ts), per store:
// - `admit`: one key, two windows (requests: 1,000/s and 100,000/min), sequential admitted hits;
// - `full log`: a window holding ~1,000 entries (the most one keeps), hit once per slot, so every call
//   frees one entry and adds one;
// - `refused, walk`: a weighted refusal whose retry-after walks the whole log (the worst case).
// Not part of `npm run bench` (which compiles it too):
//   node bench/dist/bench/windows.bench.js [calls]
import { Redis } from 'ioredis';
import { MemoryStore } from '../lib/storage/memory.store.js';
import type { OpenAIStore, WindowLimit } from '../lib/storage/openai-store.interface.js';
import { RedisStore } from '../lib/storage/redis.store.js';
import { BenchRedis } from './support/redis-server.js';
import { Samples, summarize, table, us } from './support/stats.js';

const calls = Number(process.argv[2] ?? 20_000);

async function measure(run: (i: number) => Promise<unknown>, n: number): Promise<Samples> {
  for (let i = 0; i < Math.min(1_000, n); i++) await run(-1 - i);
  const s = new Samples(n);
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await run(i);
    s.push(performance.now() - t);
  }
  return s;
}

async function scenarios(name: string, make: (now: () => number) => Promise<OpenAIStore>) {
  let now = Math.ceil(Date.now() / 1_000) * 1_000 + 600_000;
  const store = await make(() => now);
  const rows: Array<Array<string | number>> = [];
  const row = (what: string, s: Samples) => {
    const r = summarize(s.values());
    rows.push([`${name}: ${what}`, r.n, us(r.p50), us(r.p99), us(r.mean)]);
  };
  const two: WindowLimit[] = [
    { name: 'second', limit: 1_000, windowMs: 1_000 },
    { name: 'minute', limit: 100_000, windowMs: 60_000 },
  ];
  row(
    'admit (2 windows)',
    await measure(() => {
      now += 1;
      return store.consume('admit', two, 1);
    }, calls),
  );
  const big: WindowLimit[] = [{ name: 'w', limit: 1e12, windowMs: 60_000 }];
  for (let i = 0; i < 1_100; i++) {
    now += 60;
    await store.consume('full', big, 1);
  }
  row(
    'full log (~1,000 entries)',
    await measure(() => {
      now += 60;
      return store.consume('full', big, 1);
    }, calls),
  );
  const tokens: WindowLimit[] = [{ name: 'w', limit: 1_000_000, windowMs: 60_000 }];
  for (let i = 0; i < 1_000; i++) {
    now += 60;
    await store.consume('walk', tokens, 1_000);
  }
  row(
    'refused, walks ~1,000 entries',
    await measure(() => store.consume('walk', tokens, 999_000), Math.min(calls, 5_000)),
  );
  await store.close();
  return rows;
}

async function main() {
  const rows = await scenarios('memory', async (now) => new MemoryStore({ now }));
  const redis = await BenchRedis.start();
  try {
    rows.push(
      ...(await scenarios('redis', async (now) => {
        const s = new RedisStore({ url: redis.url, now }, Redis);
        await s.waitReady(5_000);
        return s;
      })),
    );
  } finally {
    await redis.stop();
  }
  console.log(table(['scenario', 'calls', 'p50 µs', 'p99 µs', 'mean µs'], rows));
}

void main();
