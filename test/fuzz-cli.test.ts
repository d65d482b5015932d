// Fuzz: command-line arguments. In-process, mutated `run` option lists through parseRunConfig and
// size strings through parseSize: a config or a UsageError with one line, never another exception.
// Then ~100 real `minivmm run` invocations with bad arguments: a non-zero exit, exactly one
// `minivmm: ` line on stderr, no stack trace, within a timeout.
import { describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseRunConfig, parseSize, UsageError } from '../vmm/config.js';
import { describeWith } from './facility.js';
import { ROOT, runMinivmm, tempDir } from './harness.js';
import { fuzzCases, fuzzSeed, isOneLine, rng } from './fuzz/prng.js';
import { baseArgs, mutateArgs, sizeString } from './fuzz/cli.js';
import { oneLineProblem } from './fuzz/real.js';

const cwd = process.cwd();
function outcome(f: () => unknown): { ok: true; value: unknown } | { ok: false; problem: string | null; usage: boolean } {
  try { return { ok: true, value: f() }; } catch (e) {
    if (!(e instanceof UsageError)) return { ok: false, usage: false, problem: `${(e as Error)?.constructor?.name} (not UsageError): ${String((e as Error)?.message).split('\n')[0]}` };
    return { ok: false, usage: true, problem: isOneLine(e.message) ? null : `message not one line: ${JSON.stringify(e.message.slice(0, 200))}` };
  }
}

describe('fuzz: CLI arguments in-process', () => {
  it('parseSize: a finite whole number of bytes, or a one-line UsageError', () => {
    const seed = fuzzSeed(0xc11);
    const r = rng(seed);
    const problems = new Map<string, string>();
    const N = fuzzCases(40_000);
    const t0 = Date.now();
    for (let i = 0; i < N; i++) {
      const s = sizeString(r);
      const o = outcome(() => parseSize(s));
      let p: string | null = null;
      if (o.ok) { const v = o.value as number; if (!Number.isSafeInteger(v) || v < 0) p = `returned ${v}`; }
      else p = o.problem;
      if (p) { const key = p.startsWith('returned') ? (o.ok && Number.isFinite(o.value as number) ? 'unsafe' : 'infinite') : p.replace(/'.*'/s, "'X'").slice(0, 40); if (!problems.has(key)) problems.set(key, `parseSize(${JSON.stringify(s.slice(0, 80))}) [seed ${seed}, case ${i}]: ${p}`); }
    }
    console.log(`parseSize fuzz: ${N} cases in ${Date.now() - t0} ms, seed ${seed}`);
    expect([...problems.values()], `seed ${seed}`).toEqual([]);
  });

  it('parseRunConfig: a sane config, or a one-line UsageError', () => {
    const seed = fuzzSeed(0xc12);
    const r = rng(seed);
    const problems = new Map<string, string>();
    const N = fuzzCases(40_000);
    const t0 = Date.now();
    let accepted = 0;
    process.chdir(ROOT); // relative guest paths resolve against the repo
    try {
      for (let i = 0; i < N; i++) {
        const args = mutateArgs(r, baseArgs(r));
        const o = outcome(() => parseRunConfig(args));
        let p: string | null = null;
        if (o.ok) {
          accepted++;
          const c = o.value as ReturnType<typeof parseRunConfig>;
          if (!Number.isSafeInteger(c.memory) || c.memory < 16 * 2 ** 20 || c.memory % (2 * 2 ** 20) !== 0) p = `accepted memory ${c.memory}`;
          else if (!Number.isInteger(c.smp) || c.smp < 1 || c.smp > 4) p = `accepted smp ${c.smp}`;
          else if (typeof c.guest !== 'string' || !c.guest.startsWith('/')) p = `guest ${c.guest}`;
        } else p = o.problem;
        if (p) { const key = p.replace(/'.*'|\d+/gs, 'X').slice(0, 40); if (!problems.has(key)) problems.set(key, `parseRunConfig(${JSON.stringify(args).slice(0, 300)}) [seed ${seed}, case ${i}]: ${p}`); }
      }
    } finally { process.chdir(cwd); }
    console.log(`parseRunConfig fuzz: ${N} cases in ${Date.now() - t0} ms, seed ${seed}, accepted ${accepted}`);
    expect([...problems.values()], `seed ${seed}`).toEqual([]);
  });
});

describeWith(['guest'], 'fuzz: CLI arguments, real invocations', () => {
  it('~100 bad `minivmm run` invocations: non-zero exit, one line, no stack trace', async () => {
    const seed = fuzzSeed(0xc13);
    const r = rng(seed);
    const dir = tempDir('minivmm-fuzz-cli-');
    mkdirSync(join(dir, 'adir'));
    // Bad input that parses: it fails later (boot, files, sockets, devices).
    const late: string[][] = [
      ['--guest', 'hello', '--append', 'a'.repeat(256)],
      ['--guest', 'hello', '--qmp', join(dir, 'nodir', 'q.sock')],
      ['--guest', 'hello', '--qmp', join(dir, `${'q'.repeat(120)}.sock`)],
      ['--guest', 'hello', '--qmp', join(dir, 'adir')],
      ['--guest', 'hello', '--serial', join(dir, 'adir')],
      ['--guest', 'hello', '--serial', '/proc/nonexistent/serial'],
      ['--guest', '/'],
      ['--guest', '/etc/passwd'],
      ['--guest', join(dir, 'adir')],
      ['--guest', '/dev/null'],
      ['--guest', 'hello', '--vdpa', '/nonexistent/vhost-vdpa-0'],
      ['--guest', 'hello', '--vdpa', '/dev/null'],
      ['--guest', 'hello', '--vdpa', join(dir, 'adir')],
    ];
    const cases: string[][] = [...late];
    process.chdir(ROOT);
    try {
      let tries = 0;
      while (cases.length < 100 && tries++ < 100_000) {
        const args = mutateArgs(r, baseArgs(r));
        if (args.some((a) => a.length > 2000 || a.includes('\0'))) continue;
        const o = outcome(() => parseRunConfig(args));
        // (under vitest the built-in guests resolve against the sources and are 'not built')
        if (!o.ok && o.usage && !/is not built/.test(String((() => { try { parseRunConfig(args); } catch (e) { return (e as Error).message; } })()))) cases.push(args); // rejected in-process: must be rejected the same way for real
      }
    } finally { process.chdir(cwd); }
    const failures: string[] = [];
    const t0 = Date.now();
    const run1 = async (args: string[], i: number) => {
      const res = await runMinivmm(['run', ...args], { timeoutMs: 20_000 });
      const isLate = i < late.length;
      let why: string | null;
      if (res.signal) why = `killed by ${res.signal} (hang?)`;
      else if (isLate && res.code === 0) why = null; // it ran after all (e.g. a path that works)
      else if (res.code === 0) why = 'exit 0';
      else if (!isLate && res.code !== 2) why = `exit ${res.code} for a usage error, stderr ${JSON.stringify(res.stderr.slice(0, 200))}`;
      else why = oneLineProblem(res.stderr);
      if (why) failures.push(`minivmm run ${JSON.stringify(args).slice(0, 300)} [seed ${seed}, case ${i}]: ${why}`);
    };
    let ran = 0;
    for (let i = 0; i < cases.length; i += 3) { const batch = cases.slice(i, i + 3); await Promise.all(batch.map((a, j) => run1(a, i + j))); ran += batch.length; }
    console.log(`CLI fuzz (real): ${ran} invocations in ${Date.now() - t0} ms, seed ${seed}`);
    expect(cases.length).toBe(100);
    expect(failures, `seed ${seed}`).toEqual([]);
  }, 120_000);
});
