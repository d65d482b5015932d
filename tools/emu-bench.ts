// Guest instructions per second on the emu accelerator, for memtest and counter.
//
//   node dist/tools/emu-bench.js [--iters N] [--rounds N] [--memory SIZE] [--kvm]
//
// How instructions are counted: each guest runs twice with the same arguments, once counting
// (every translated block executed adds the number of guest instructions Unicorn put in it;
// exact for these guests, which take no exceptions in the middle of a block) and once timed
// without counting; the guests are deterministic (their control flow does not depend on time),
// so the count of the first is the count of the second. The timed run is measured from the first instruction to the exit port
// (VM creation and ELF loading excluded; the guests' serial output included). With --kvm the same
// guests also run under KVM through today's CLI for a ratio measured in the same run: the KVM
// time is the whole process's minus that of `hello` (process start-up and VM creation).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { EmuAccelerator } from '../src/accel/emu/index.js';
import type { EmuVcpu } from '../src/accel/emu/cpu.js';
import { GuestRunner } from './emu/driver.js';
import { MiB } from '../src/memory.js';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..');
const guest = (name: string) => join(ROOT, 'dist/guests', `${name}.elf`);

export interface EmuBenchResult {
  guest: string; args: string; memory: number; instructions: number; seconds: number; instructionsPerSecond: number;
  kvm?: { seconds: number; instructionsPerSecond: number };
}

async function runOnce(name: string, cmdline: string, memory: number, counting: boolean): Promise<{ instructions: number; seconds: number; output: string }> {
  const g = GuestRunner.boot(EmuAccelerator.open(), { image: guest(name), cmdline, memory });
  const shim = (g.vcpu as EmuVcpu).shim;
  if (counting) shim.setCounting(true);
  const t0 = process.hrtime.bigint();
  try { await g.runToEnd(3_600_000); } finally { g.close(); g.mem.unmap(); }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (g.fatal || g.exitCode !== 0) throw new Error(`${name} ${cmdline}: ${g.fatal ?? `exit ${g.exitCode}`}; output ${JSON.stringify(g.output.slice(-300))}`);
  return { instructions: Number(shim.instructions()), seconds, output: g.output };
}

/** Wall time of `minivmm run --accel kvm` for a guest. */
function kvmSeconds(name: string, cmdline: string, memory: number): number {
  const t0 = process.hrtime.bigint();
  const p = spawnSync(process.execPath, [join(ROOT, 'bin/minivmm.js'), 'run', '--accel', 'kvm', '--guest', name, '--memory', `${memory / MiB}M`, ...(cmdline ? ['--append', cmdline] : [])], { encoding: 'utf8' });
  if (p.status !== 0) throw new Error(`KVM run of ${name} failed: ${p.stderr.trim().split('\n').pop()}`);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Measures one guest: an exact instruction count, then the timed run (best of `repeat`). */
export async function emuBench(name: string, cmdline: string, memory: number, repeat = 3, kvm = false): Promise<EmuBenchResult> {
  const counted = await runOnce(name, cmdline, memory, true);
  let best = Infinity;
  for (let i = 0; i < repeat; i++) best = Math.min(best, (await runOnce(name, cmdline, memory, false)).seconds);
  const r: EmuBenchResult = {
    guest: name, args: cmdline, memory, instructions: counted.instructions, seconds: best, instructionsPerSecond: counted.instructions / best,
  };
  if (kvm) {
    const seconds = kvmSeconds(name, cmdline, memory) - kvmSeconds('hello', '', memory);
    r.kvm = { seconds, instructionsPerSecond: counted.instructions / seconds };
  }
  return r;
}

/** The standard set: counter (compute) and memtest on emu; with `kvm`, a smaller counter on both for a ratio. */
export async function emuSpeed(o: { iters?: string; rounds?: string; memory?: number; kvm?: boolean } = {}): Promise<EmuBenchResult[]> {
  const results = [
    await emuBench('counter', `iters=${o.iters ?? '20000000'} rounds=${o.rounds ?? '3'}`, 256 * MiB),
    await emuBench('memtest', '', o.memory ?? 1024 * MiB),
  ];
  if (o.kvm) results.push(await emuBench('counter', 'iters=400000 rounds=2', 256 * MiB, 3, true));
  return results;
}

export function describeEmuResult(r: EmuBenchResult): string {
  const kvm = r.kvm ? `; KVM ${(r.kvm.instructionsPerSecond / 1e6).toFixed(1)} M instructions/s (${r.kvm.seconds.toFixed(2)} s): emu ${(r.instructionsPerSecond / r.kvm.instructionsPerSecond).toFixed(0)}x` : '';
  return `emu ${r.guest} ${r.args || '(defaults)'} ${r.memory / MiB} MiB: ${(r.instructions / 1e6).toFixed(1)} M instructions in ${r.seconds.toFixed(3)} s = ${(r.instructionsPerSecond / 1e6).toFixed(0)} M instructions/s${kvm}`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { iters: { type: 'string', default: '20000000' }, rounds: { type: 'string', default: '3' }, memory: { type: 'string', default: '1024' }, kvm: { type: 'boolean', default: false } },
  });
  for (const r of await emuSpeed({ iters: values.iters, rounds: values.rounds, memory: Number(values.memory) * MiB, kvm: values.kvm })) console.log(describeEmuResult(r));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
