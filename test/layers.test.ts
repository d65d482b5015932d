// The import graph: layers point one way (src <- devices <- vmm <- cpr <- tools <- cli) and no
// module depends on itself through others. Type-only imports count: they are dependencies of the
// design even when they vanish at run time. Needs nothing but the source tree.
import { describe, it, expect } from 'vitest';
import { readFileSync, readdirSync, statSync, existsSync } from 'node:fs';
import { join, dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** Lower may not import higher. */
const LAYERS = ['src', 'devices', 'vmm', 'cpr', 'tools', 'cli'] as const;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return sources(p);
    return /\.(ts|mjs)$/.test(name) && !name.endsWith('.d.ts') ? [p] : [];
  });
}

/** Every module a file imports (static, re-export or dynamic), as repository paths. */
export function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [
    ...text.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]/gm),
    ...text.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm),
    ...text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g),
  ].map((m) => m[1]);
  return specs.filter((s) => s.startsWith('.')).map((s) => {
    const target = resolve(dirname(file), s);
    const ts = target.replace(/\.js$/, '.ts');
    return relative(ROOT, existsSync(ts) ? ts : target);
  });
}

const layerOf = (path: string): number => LAYERS.indexOf(path.split('/')[0] as (typeof LAYERS)[number]);

function graph(): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const layer of LAYERS) for (const f of sources(join(ROOT, layer))) g.set(relative(ROOT, f), importsOf(f));
  return g;
}

/** One cycle per strongly connected component with more than one module (or a self-import). */
function cycles(g: Map<string, string[]>): string[][] {
  const index = new Map<string, number>(), low = new Map<string, number>(), stack: string[] = [], on = new Set<string>();
  const out: string[][] = [];
  let n = 0;
  const visit = (v: string): void => {
    index.set(v, n); low.set(v, n); n++; stack.push(v); on.add(v);
    for (const w of g.get(v) ?? []) {
      if (!g.has(w)) continue;
      if (!index.has(w)) { visit(w); low.set(v, Math.min(low.get(v)!, low.get(w)!)); } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do { w = stack.pop()!; on.delete(w); scc.push(w); } while (w !== v);
      if (scc.length > 1 || (g.get(v) ?? []).includes(v)) out.push(scc.sort());
    }
  };
  for (const v of g.keys()) if (!index.has(v)) visit(v);
  return out;
}

describe('the import graph', () => {
  const g = graph();

  it('covers the layers', () => {
    for (const layer of LAYERS) expect([...g.keys()].some((f) => f.startsWith(`${layer}/`)), layer).toBe(true);
  });

  it('has no upward import between layers', () => {
    const upward = [...g].flatMap(([from, tos]) => tos.filter((to) => layerOf(to) > layerOf(from)).map((to) => `${from} -> ${to}`));
    expect(upward).toEqual([]);
  });

  it('imports nothing from outside the layers (test/, bin/, other trees)', () => {
    const outside = [...g].flatMap(([from, tos]) => tos.filter((to) => layerOf(to) < 0).map((to) => `${from} -> ${to}`));
    expect(outside).toEqual([]);
  });

  it('has no cycles', () => {
    expect(cycles(g).map((c) => c.join(' <-> '))).toEqual([]);
  });

  it('would catch a cycle and an upward import (the checker itself)', () => {
    expect(cycles(new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['a']]]))).toEqual([['a', 'b', 'c']]);
    expect(layerOf('tools/x.ts') > layerOf('vmm/y.ts')).toBe(true);
  });
});
