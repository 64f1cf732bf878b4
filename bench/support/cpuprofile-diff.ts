// Self time per function of two V8 CPU profiles (.cpuprofile), each divided by the calls it covers, and
// their difference: where the microseconds one variant adds over the other go.
//   node bench/dist/bench/support/cpuprofile-diff.js <base.cpuprofile> <base calls> <variant.cpuprofile> <variant calls> [top]
import { readFileSync } from 'node:fs';

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
export function placeOf(url: string): string {
  if (!url) return '(V8 / native)';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1]!;
  const own = /\/(lib|bench|sample)\/(.+)$/.exec(url);
  if (own) return `${own[1]}/${own[2]!.replace(/^dist\//, '').replace(/\.js$/, '.ts')}`;
  return url.replace(/^file:\/\//, '');
}

/** Self time (µs) by function and by package/file, idle excluded. */
export function selfTimes(file: string): {
  byFn: Map<string, number>;
  byPlace: Map<string, number>;
  busy: number;
} {
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
    const place = ['(garbage collector)', '(program)'].includes(name) ? name : placeOf(n.callFrame.url);
    const fn = n.callFrame.url ? `${name} (${place}:${n.callFrame.lineNumber + 1})` : name;
    byFn.set(fn, (byFn.get(fn) ?? 0) + t);
    byPlace.set(place, (byPlace.get(place) ?? 0) + t);
  }
  return { byFn, byPlace, busy };
}

/** Markdown tables: per package/file and per function, base and variant µs per call and the difference. */
export function diffTables(
  base: ReturnType<typeof selfTimes>,
  baseCalls: number,
  variant: ReturnType<typeof selfTimes>,
  variantCalls: number,
  top: number,
  names: [string, string] = ['base', 'variant'],
): string {
  const lines: string[] = [
    `CPU per call (profiled busy time / calls): ${names[0]} ${(base.busy / baseCalls).toFixed(0)} µs, ` +
      `${names[1]} ${(variant.busy / variantCalls).toFixed(0)} µs, added ${(variant.busy / variantCalls - base.busy / baseCalls).toFixed(0)} µs`,
  ];
  for (const [title, a, b] of [
    ['package / file', base.byPlace, variant.byPlace],
    ['function (self time)', base.byFn, variant.byFn],
  ] as const) {
    lines.push(
      '',
      `| ${title} | ${names[0]} µs/call | ${names[1]} µs/call | added µs/call |`,
      '| --- | ---: | ---: | ---: |',
    );
    const rows = [...new Set([...a.keys(), ...b.keys()])]
      .map((k) => {
        const x = (a.get(k) ?? 0) / baseCalls;
        const y = (b.get(k) ?? 0) / variantCalls;
        return { k, x, y, d: y - x };
      })
      .sort((p, q) => q.d - p.d);
    for (const r of rows.slice(0, top))
      lines.push(
        `| ${r.k} | ${r.x.toFixed(1)} | ${r.y.toFixed(1)} | ${r.d >= 0 ? '+' : ''}${r.d.toFixed(1)} |`,
      );
  }
  return lines.join('\n');
}

if (require.main === module) {
  const [a, na, b, nb, top] = process.argv.slice(2);
  if (!a || !na || !b || !nb)
    throw new Error('usage: cpuprofile-diff.js <base.cpuprofile> <calls> <variant.cpuprofile> <calls> [top]');
  console.log(diffTables(selfTimes(a), Number(na), selfTimes(b), Number(nb), Number(top ?? 40)));
}
