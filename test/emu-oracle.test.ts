// Compile-twice oracle: each program in tools/guests/oracle is built for the host (run natively,
// its output is the expectation) and as a toy guest run on the emu accelerator, at -O0, -O2 and
// -Os; the two outputs must match byte for byte. No hand-written expectations.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeWith } from './facility.js';
import { tempDir } from './harness.js';
import { GUESTS, buildGuest, buildHost, emu, firstDifference } from './emu-helpers.js';
import { GuestRunner } from '../tools/emu/driver.js';
import { GUEST_OUTPUT } from './emu-ports.js';
import type { EmuVcpu } from '../src/accel/emu/cpu.js';

const ORACLE = join(GUESTS, 'oracle');
const PROGRAMS = ['arith', 'shifts', 'strings', 'control', 'divide'];
const LEVELS = ['-O0', '-O2', '-Os'];
const GUEST_OUT_ADDR = 0x400000;

/** Builds `prog` both ways at `opt`; runs both; returns [expected, the guest's output]. */
async function both(dir: string, prog: string, opt: string, sliceNs = 0): Promise<[string, string]> {
  const common = [`${prog}.c`, 'print.c', 'div.S'].map((f) => join(ORACLE, f));
  const host = buildHost([...common, join(ORACLE, 'host.c')], join(dir, `${prog}${opt}`), opt);
  const native = spawnSync(host, { encoding: 'latin1', maxBuffer: 1 << 28 });
  expect(native.status, native.stderr).toBe(0);
  expect(native.stdout).toContain(`${prog} done\n`);

  const elf = buildGuest([...common, join(ORACLE, 'guest.c'), join(ORACLE, 'guest_de.S')], join(dir, `${prog}${opt}.elf`), opt);
  const g = GuestRunner.boot(emu(), { image: elf });
  if (sliceNs) (g.vcpu as EmuVcpu).shim.setSlice(sliceNs);
  let output = '';
  g.onPort = (port, write, value) => {
    if (port !== GUEST_OUTPUT || !write) return undefined;
    output = g.mem.view(GUEST_OUT_ADDR, value).toString('latin1');
    return 0;
  };
  try { await g.runToEnd(120_000); } finally { g.close(); }
  expect(g.fatal).toBeNull();
  expect(g.exitCode).toBe(0);
  return [native.stdout, output];
}

describeWith(['emu'], 'compile-twice oracle on emu', () => {
  const dir = tempDir('minivmm-oracle-');
  for (const prog of PROGRAMS) {
    for (const opt of LEVELS) {
      it(`${prog} ${opt}: the guest prints what the host prints`, async () => {
        const [expected, output] = await both(dir, prog, opt);
        expect(firstDifference(expected, output)).toBe('');
      });
    }
  }
  // Unicorn 2.0 re-runs the start of a block when a stop lands in its middle (tools/emu/
  // unicorn-limits.c, limit 8): stopping the guest every 50 us must still change nothing.
  for (const prog of ['arith', 'control']) {
    it(`${prog} -O2 stopped every 50 us: still the host's output`, async () => {
      const [expected, output] = await both(dir, prog, '-O2', 50_000);
      expect(firstDifference(expected, output)).toBe('');
    });
  }
});

