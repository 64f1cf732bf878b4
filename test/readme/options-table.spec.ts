import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

// Vitest runs from the repository root.
const root = `${process.cwd()}/`;
const readme = readFileSync(`${root}README.md`, 'utf8');
const source = readFileSync(`${root}lib/options/openai-module-options.interface.ts`, 'utf8');
// Interfaces the options extend from elsewhere (moderation's per-check options).
const shared = readFileSync(`${root}lib/call/upstream-call.ts`, 'utf8');

/** Member names of `interface name` in the options file, with those of the interfaces it extends there. */
function members(name: string): string[] {
  const pattern = new RegExp(`export interface ${name}(?: extends ([\\w, ]+))? \\{([\\s\\S]*?)\\n\\}`);
  const m = pattern.exec(source) ?? pattern.exec(shared);
  if (!m) return [];
  const own = [...m[2].matchAll(/^ {2}(\w+)\??:/gm)].map((x) => x[1]);
  const parents = (m[1] ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  return [...own, ...parents.flatMap(members)];
}

/** Every option a user can set: top-level keys, and `group.key` for the groups typed in the options file. */
function optionPaths(): string[] {
  const top = source.match(/export interface OpenAIProfileOptions \{([\s\S]*?)\n\}/)![1];
  const paths: string[] = ['environment', 'hooks'];
  for (const [, key, type] of top.matchAll(/^ {2}(\w+)\?: (\w+)/gm)) {
    const inner = members(type);
    if (inner.length === 0) paths.push(key);
    else for (const k of inner) paths.push(`${key}.${k}`);
  }
  return paths;
}

/** The option paths the README's configuration table names: `a.b` / `c` / `d` cells expand to `a.c`, `a.d`. */
function documentedPaths(): Set<string> {
  const section = readme.split('## Configuration reference')[1]!.split('\n## ')[0]!;
  const out = new Set<string>();
  for (const line of section.split('\n')) {
    if (!line.startsWith('| `')) continue;
    const cell = line.split('|')[1]!;
    const names = [...cell.matchAll(/`([\w.]+)`/g)].map((m) => m[1]);
    let group = '';
    for (const n of names) {
      if (n.includes('.')) {
        out.add(n);
        group = n.slice(0, n.lastIndexOf('.') + 1);
      } else out.add(group ? `${group}${n}` : n);
    }
  }
  return out;
}

describe('README configuration reference', () => {
  it('lists every option of the options interface', () => {
    const documented = documentedPaths();
    // A store's options are listed one level deeper (`storage.memory.maxKeys`).
    const listed = (p: string) => documented.has(p) || [...documented].some((d) => d.startsWith(`${p}.`));
    const missing = optionPaths().filter((p) => !listed(p));
    expect(missing).toEqual([]);
  });

  it('names no option that does not exist', () => {
    const known = new Set(optionPaths());
    // `storage.memory.*` and `storage.redis.*` are the stores' own options, one level deeper.
    const unknown = [...documentedPaths()].filter(
      (p) => !known.has(p) && !/^storage\.(memory|redis)\./.test(p),
    );
    expect(unknown).toEqual([]);
  });
});
