// Summarizes a V8 .cpuprofile (node --cpu-prof): self time by function and by package or lib/ file.
//   node bench/dist/bench/support/cpuprofile-summary.js <file.cpuprofile> [top]
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

function where(url: string): string {
  if (!url) return '(native/V8)';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1]!;
  const lib = /\/(lib|bench|sample)\/(.+)$/.exec(url);
  if (lib) return `${lib[1]}/${lib[2]!.replace(/^dist\//, '')}`;
  if (url.startsWith('node:')) return url;
  return url;
}

function main(): void {
  const file = process.argv[2];
  const top = Number(process.argv[3] ?? 30);
  if (!file) throw new Error('usage: cpuprofile-summary.js <file.cpuprofile> [top]');
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++)
    self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + (p.timeDeltas[i] ?? 0));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const byFn = new Map<string, number>();
  const byPlace = new Map<string, number>();
  for (const [id, t] of self) {
    const n = byId.get(id)!;
    const name = n.callFrame.functionName || '(anonymous)';
    const place = where(n.callFrame.url);
    if (name === '(idle)') continue;
    byFn.set(
      `${name} — ${place}:${n.callFrame.lineNumber + 1}`,
      (byFn.get(`${name} — ${place}:${n.callFrame.lineNumber + 1}`) ?? 0) + t,
    );
    const group = ['(garbage collector)', '(program)'].includes(name) ? name : place;
    byPlace.set(group, (byPlace.get(group) ?? 0) + t);
  }
  const idle = [...self.entries()]
    .filter(([id]) => byId.get(id)!.callFrame.functionName === '(idle)')
    .reduce((a, [, t]) => a + t, 0);
  const busy = total - idle;
  const pct = (t: number) => `${((t / busy) * 100).toFixed(1)}%`;
  console.log(
    `profile: ${(total / 1000).toFixed(0)} ms sampled, ${(busy / 1000).toFixed(0)} ms busy (percentages of busy time)\n`,
  );
  console.log('Self time by package / file:');
  for (const [k, t] of [...byPlace.entries()].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`  ${pct(t).padStart(6)}  ${k}`);
  console.log('\nSelf time by function:');
  for (const [k, t] of [...byFn.entries()].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`  ${pct(t).padStart(6)}  ${k}`);
}

main();
