// Longer-running fuzzing, in-process: the same generators as test/fuzz*.test.ts without their time
// bounds. `npm run fuzz -- [--cases N] [--seed S] [--only cli,size,state,elf]`
// Exit status 1 if any case broke the rule (a one-line error of the right class, or success).
import { parseArgs } from 'node:util';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseRunConfig, parseSize, UsageError } from '../../vmm/config.js';
import { decodeState, encodeState, loadEncoder, StateError } from '../../cpr/envelope.js';
import { GuestImageError, loadElf } from '../../vmm/boot.js';
import { GuestMemory } from '../../src/memory.js';
import { rng, isOneLine } from './prng.js';
import { baseArgs, mutateArgs, sizeString } from './cli.js';
import { mutateState, plausibleState, unpack, bodyOf } from './state.js';
import { mutateElf } from './elf.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../..'); // from dist/test/fuzz/

function classify(f: () => unknown, cls: new (...a: never[]) => Error): string | null {
  try { f(); return null; } catch (e) {
    if (!(e instanceof cls)) return `${(e as Error)?.constructor?.name ?? typeof e} instead of ${cls.name}: ${String((e as Error)?.message ?? e).split('\n')[0]}`;
    return isOneLine(e.message) ? null : `${cls.name} message is not one line: ${JSON.stringify(e.message.slice(0, 200))}`;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { cases: { type: 'string', default: '100000' }, seed: { type: 'string' }, only: { type: 'string', default: 'size,cli,state,elf' } } });
  const cases = Number(values.cases);
  const seed = values.seed !== undefined ? Number(values.seed) >>> 0 : (Date.now() >>> 0);
  if (!Number.isInteger(cases) || cases <= 0) { process.stderr.write(`minivmm-fuzz: --cases ${values.cases}: a positive count\n`); process.exit(2); }
  const only = new Set(String(values.only).split(','));
  const findings = new Map<string, string>();
  const note = (target: string, i: number, input: string, p: string | null) => {
    if (!p) return;
    const key = `${target}:${p.replace(/'.*'|"[^"]*"|0x[0-9a-f]+|\d+/gs, 'X').slice(0, 60)}`;
    if (!findings.has(key)) findings.set(key, `${target} case ${i} (seed ${seed}): ${p}\n    input: ${input.slice(0, 300)}`);
  };
  const report = (target: string, n: number, t0: number) => process.stdout.write(`${target}: ${n} cases in ${Date.now() - t0} ms\n`);

  if (only.has('size')) {
    const r = rng(seed ^ 1), t0 = Date.now();
    for (let i = 0; i < cases; i++) {
      const s = sizeString(r);
      let p = classify(() => { const v = parseSize(s); if (!Number.isSafeInteger(v) || v < 0) throw new Error(`parseSize returned ${v}`); }, UsageError);
      if (p?.startsWith('Error instead')) p = p.slice('Error instead of UsageError: '.length);
      note('parseSize', i, JSON.stringify(s), p);
    }
    report('parseSize', cases, t0);
  }
  if (only.has('cli')) {
    const r = rng(seed ^ 2), t0 = Date.now();
    const cwd = process.cwd(); process.chdir(ROOT);
    for (let i = 0; i < cases; i++) { const a = mutateArgs(r, baseArgs(r)); note('parseRunConfig', i, JSON.stringify(a), classify(() => parseRunConfig(a), UsageError)); }
    process.chdir(cwd);
    report('parseRunConfig', cases, t0);
  }
  if (only.has('state')) {
    await loadEncoder();
    const r = rng(seed ^ 3), t0 = Date.now();
    const seeds = [encodeState(plausibleState()), encodeState(plausibleState({ smp: 2, memory: 4 * 2 ** 30, vdpa: true }))];
    const decoded = seeds.map((b) => unpack(bodyOf(b)));
    for (let i = 0; i < cases; i++) {
      const k = r.int(seeds.length);
      const { kind, blob } = mutateState(r, seeds[k], decoded[k]);
      note('decodeState', i, `${kind} ${blob.subarray(0, 48).toString('hex')}...`, classify(() => decodeState(blob), StateError));
    }
    report('decodeState', cases, t0);
  }
  if (only.has('elf')) {
    const r = rng(seed ^ 4), t0 = Date.now();
    const guests = ['hello', 'counter', 'netloop'].map((g) => readFileSync(join(ROOT, 'dist/guests', `${g}.elf`)));
    const mem = GuestMemory.create(64 * 2 ** 20);
    const dir = mkdtempSync(join(tmpdir(), 'minivmm-fuzz-'));
    const p = join(dir, 'm.elf');
    const n = Math.ceil(cases / 4); // each case writes a file and may fill megabytes of guest RAM
    for (let i = 0; i < n; i++) {
      const { kind, what, image } = mutateElf(r, r.pick(guests));
      writeFileSync(p, image);
      note('loadElf', i, `${kind}: ${what}`, classify(() => loadElf(mem, p), GuestImageError));
    }
    mem.unmap(); rmSync(dir, { recursive: true, force: true });
    report('loadElf', n, t0);
  }
  for (const f of findings.values()) process.stdout.write(`FINDING ${f}\n`);
  process.stdout.write(`seed ${seed}: ${findings.size} distinct finding(s)\n`);
  process.exitCode = findings.size ? 1 : 0;
}

main().catch((e) => { process.stderr.write(`minivmm-fuzz: ${(e as Error).message}\n`); process.exit(2); });
