// A test run leaves nothing behind. test/run-setup.ts gives the run a private TMPDIR and a private
// copy of the build; after each test file (this is a vitest setup file: its afterAll runs after the
// file's own) the scratch directories made with tempDir() are removed, and then the TMPDIR must be
// empty and no process started from the build copy may still run. Whatever is found (a device
// daemon of a VM that died, its mount, log or disk file, a VMM left running) is cleaned up, so the
// next file starts clean, and fails the file.
import { afterAll } from 'vitest';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MNT_DETACH, processAlive, umount2 } from '../src/libc.js';
import { removeTempDirs } from './harness.js';

/** Live processes whose command line mentions `dir` (zombies have none). */
function processesUnder(dir: string): { pid: number; cmd: string }[] {
  const found: { pid: number; cmd: string }[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    let cmd: string;
    try { cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ').trim(); } catch { continue; }
    if (cmd.includes(dir)) found.push({ pid: Number(p), cmd: cmd.slice(0, 200) });
  }
  return found;
}

const mountsUnder = (dir: string): string[] =>
  readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m?.startsWith(`${dir}/`));

/**
 * What the run left in `tmp` and which processes started from `build` still run, after a grace
 * period for things that are on their way out. Everything found is removed (processes SIGKILLed,
 * mounts detached, files deleted). Returns one line per leftover.
 */
export async function sweepLeftovers(tmp: string, build: string, graceMs = 3000): Promise<string[]> {
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && (readdirSync(tmp).length || processesUnder(build).length)) await new Promise((r) => setTimeout(r, 50));
  const found: string[] = [];
  for (const p of processesUnder(build)) {
    found.push(`process ${p.pid}: ${p.cmd}`);
    try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
    while (processAlive(p.pid)) await new Promise((r) => setTimeout(r, 10));
  }
  for (const m of mountsUnder(tmp).reverse()) {
    found.push(`mount ${m}`);
    try { umount2(m, MNT_DETACH); } catch { /* raced */ }
  }
  for (const f of readdirSync(tmp)) {
    found.push(`file ${join(tmp, f)}`);
    rmSync(join(tmp, f), { recursive: true, force: true });
  }
  return found;
}

const build = process.env.MINIVMM_TEST_BUILD;
if (build) {
  afterAll(async () => {
    removeTempDirs();
    const left = await sweepLeftovers(tmpdir(), build);
    if (left.length) throw new Error(`this test file left behind (now cleaned up):\n  ${left.join('\n  ')}`);
  }, 30_000);
}
