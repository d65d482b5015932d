// Fuzz: guest ELF images. Mutations of the built guests through loadElf in-process (64 MiB of
// guest RAM): it loads, or throws GuestImageError with one line; never another exception. Then
// ~50 mutated images through the real binary: a one-line error and a non-zero exit, or a guest
// that runs (until stopped), exits, or fails with a one-line report — never a hang or a trace.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkfifoSync } from './fuzz/fifo.js';
import { readFileSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { GuestMemory } from '../src/memory.js';
import { GuestImageError, loadElf } from '../vmm/boot.js';
import { describeWith } from './facility.js';
import { BIN, BUILD, tempDir } from './harness.js';
import { close } from '../src/libc.js';
import { fuzzCases, fuzzSeed, isOneLine, rng } from './fuzz/prng.js';
import { mutateElf, type ElfMutation } from './fuzz/elf.js';
import { oneLineProblem, withoutAccelNotice } from './fuzz/real.js';

const GUESTS = ['hello', 'counter', 'netloop'].map((g) => readFileSync(join(BUILD, 'dist/guests', `${g}.elf`)));

describeWith([], 'fuzz: guest ELF images in-process', () => {
  let mem: GuestMemory;
  const dir = tempDir('minivmm-fuzz-elf-');
  beforeAll(() => { mem = GuestMemory.create(64 * 2 ** 20); });
  afterAll(() => { mem?.unmap(); for (const r of mem?.regions ?? []) close(r.fd); });

  it('the seeds load', () => { GUESTS.forEach((g, i) => { const p = join(dir, `seed${i}.elf`); writeFileSync(p, g); expect(loadElf(mem, p).segments.length).toBeGreaterThan(0); }); });

  it('mutated images: loaded, or GuestImageError with one line', () => {
    const seed = fuzzSeed(0xe1f);
    const r = rng(seed);
    const N = fuzzCases(5_000); // ~3.4 ms a case here: 5,000 in ~17 s
    const p = join(dir, 'm.elf');
    const problems = new Map<string, string>();
    const counts: Record<string, number> = {};
    let loaded = 0, refused = 0;
    const t0 = Date.now();
    let i = 0;
    for (; i < N; i++) {
      const { kind, what, image } = mutateElf(r, r.pick(GUESTS));
      counts[kind] = (counts[kind] ?? 0) + 1;
      writeFileSync(p, image);
      let problem: string | null = null;
      try { loadElf(mem, p); loaded++; } catch (e) {
        refused++;
        if (!(e instanceof GuestImageError)) problem = `${(e as Error)?.constructor?.name} (not GuestImageError): ${String((e as Error)?.message).split('\n')[0]}`;
        else if (!isOneLine(e.message)) problem = `message not one line: ${JSON.stringify(e.message.slice(0, 200))}`;
      }
      if (problem) {
        const key = problem.replace(/0x[0-9a-f]+|\d+/g, 'N').slice(0, 80);
        if (!problems.has(key)) { const keep = join(dir, `problem-${problems.size}.elf`); writeFileSync(keep, image); problems.set(key, `case ${i} (${kind}: ${what}, seed ${seed}, image ${keep}): ${problem}`); }
      }
    }
    console.log(`ELF fuzz: ${i} cases in ${Date.now() - t0} ms, seed ${seed}, loaded ${loaded}, by kind ${JSON.stringify(counts)}`);
    expect(loaded + refused).toBe(N);
    expect([...problems.values()], `seed ${seed}`).toEqual([]);
  }, 60_000);
});

describe('fuzz: guest images that are not files', () => {
  it('a FIFO or a character device as --guest is refused at once with one line (not read forever)', async () => {
    const dir = tempDir('minivmm-fuzz-elf-');
    const fifo = join(dir, 'guest.fifo');
    mkfifoSync(fifo);
    const mem = GuestMemory.create(32 * 2 ** 20);
    const bad: string[] = [];
    try {
      for (const path of [fifo, '/dev/zero']) {
        // In a child process: the bug is that this never returns (FIFO) or eats gigabytes (/dev/zero).
        const res = await runFor(4000, [process.execPath, '--input-type=module', '-e',
          `import { GuestMemory } from ${JSON.stringify(join(BUILD, 'dist/src/memory.js'))};
           import { loadElf, GuestImageError } from ${JSON.stringify(join(BUILD, 'dist/vmm/boot.js'))};
           try { loadElf(GuestMemory.create(32 * 2 ** 20), ${JSON.stringify(path)}); console.log('loaded'); }
           catch (e) { console.log(e instanceof GuestImageError ? 'GuestImageError ' + e.message : 'other ' + e); }`]);
        if (res.timedOut) bad.push(`loadElf(${path}) did not return within 5 s`);
        else if (!/^GuestImageError guest image .*\n$/.test(res.stdout)) bad.push(`loadElf(${path}): ${JSON.stringify(res.stdout + res.stderr).slice(0, 300)}`);
      }
      expect(bad).toEqual([]);
    } finally { mem.unmap(); for (const r of mem.regions) close(r.fd); }
  }, 30_000);
});

function runFor(ms: number, argv: string[], signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string; timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '', timedOut = false;
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { timedOut = true; child.kill(signal); setTimeout(() => child.kill('SIGKILL'), 3000).unref(); }, ms);
    child.on('close', (code, sig) => { clearTimeout(t); resolve({ code, signal: sig, stdout, stderr, timedOut }); });
  });
}

describeWith(['guest'], 'fuzz: guest ELF images through the real binary', () => {
  it('~50 mutated images: one-line error, or a guest that runs, exits or fails with one line', async () => {
    const seed = fuzzSeed(0xe20);
    const r = rng(seed);
    const dir = tempDir('minivmm-fuzz-elf-run-');
    const N = fuzzCases(50);
    const kinds: ElfMutation[] = ['segment', 'segment', 'segment', 'phdr', 'ehdr', 'truncate', 'phtable', 'bytes', 'extend'];
    const failures: string[] = [];
    const tally: Record<string, number> = {};
    const t0 = Date.now();
    const one = async (i: number) => {
      const g = r.int(GUESTS.length);
      const { kind, what, image } = mutateElf(r, GUESTS[g], kinds[i % kinds.length]);
      const p = join(dir, `g${i}.elf`);
      writeFileSync(p, image);
      // A guest that keeps running is stopped with SIGTERM after 3 s: a live VMM exits 143 at once.
      const res = await runFor(3000, [process.execPath, BIN, 'run', '--guest', p, '--memory', '64M', '--log-level', 'silent'], 'SIGTERM');
      let why: string | null = null, outcome: string;
      if (res.signal === 'SIGKILL') { why = 'did not stop on SIGTERM within 3 s (hung VMM)'; outcome = 'hang'; }
      else if (res.timedOut) { outcome = 'ran'; if (withoutAccelNotice(res.stderr).trim()) why = oneLineProblem(res.stderr); }
      else if (res.code === 0) { outcome = 'exit 0'; if (withoutAccelNotice(res.stderr).trim()) why = `exit 0 with stderr ${JSON.stringify(res.stderr.slice(0, 200))}`; }
      // The exit port, any value: the VMM's own failures (exit 1 or 2) always print a line, so a
      // silent exit is the guest's (a mutated guest may reach its own die(), exit 2, on a fast CPU).
      else if (withoutAccelNotice(res.stderr).trim() === '' && res.code !== null) outcome = `guest exit ${res.code}`;
      else { outcome = /emulation failure|triple fault|guest shut down/.test(res.stderr) ? 'guest failed' : /guest image/.test(res.stderr) ? 'rejected' : `exit ${res.code}`; why = oneLineProblem(res.stderr); }
      tally[outcome] = (tally[outcome] ?? 0) + 1;
      if (why) failures.push(`case ${i} (${kind}: ${what}, seed ${seed}, image ${p}): ${outcome}: ${why}`);
    };
    for (let i = 0; i < N; i += 3) await Promise.all(Array.from({ length: Math.min(3, N - i) }, (_, j) => one(i + j)));
    const ran = Object.values(tally).reduce((a, b) => a + b, 0);
    console.log(`ELF fuzz (real): ${ran} images in ${Date.now() - t0} ms, seed ${seed}, outcomes ${JSON.stringify(tally)}`);
    expect(ran).toBe(N);
    expect(failures, `seed ${seed}`).toEqual([]);
  }, 120_000);
});
