// State round trip on emu: run a guest, pause it, save the vCPU and platform state, build a new
// VM over the same RAM, restore, and run on: the guest must continue where it was (the counter
// keeps counting, its TSC never goes back; a guest asleep on the LAPIC timer wakes up again).
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeWith } from './facility.js';
import { ROOT, tempDir } from './harness.js';
import { GUESTS, buildGuest, emu } from './emu-helpers.js';
import { GuestRunner } from '../tools/emu/driver.js';

/** Pauses `g`, moves its state to a new VM over the same memory, and starts that one. */
async function moveToNewVm(g: GuestRunner): Promise<GuestRunner> {
  await g.pause();
  expect(g.fatal).toBeNull();
  const cpu = g.vcpu.getState(), platform = g.vm.getPlatformState(), serial = g.serial.save();
  g.close();
  const next = GuestRunner.restore(emu(), g.mem, cpu, platform, serial);
  next.output = g.output;
  void next.start();
  return next;
}

describeWith(['emu'], 'emu state round trip', () => {
  it('counter continues in a new VM: same count, TSC monotonic', async () => {
    let g = GuestRunner.boot(emu(), { image: join(ROOT, 'dist/guests/counter.elf'), cmdline: 'iters=200000 rounds=0' });
    void g.start();
    try {
      for (let n = 0; n < 3; n++) {
        await g.waitFor(new RegExp(`round ${n * 3 + 3}\n`));
        g = await moveToNewVm(g);
      }
      await g.waitFor(/round 12\n/);
      await g.pause();
    } finally { g.close(); g.mem.unmap(); }
    expect(g.fatal).toBeNull();
    const rounds = [...g.output.matchAll(/^counter (\d+) tsc (\d+) round (\d+)$/gm)];
    expect(g.output).not.toMatch(/MISMATCH|BACKWARDS/);
    expect(rounds.length).toBeGreaterThanOrEqual(12);
    rounds.forEach((m, i) => { expect(Number(m[3])).toBe(i + 1); expect(Number(m[1])).toBe(200000 * (i + 1)); });
    for (let i = 1; i < rounds.length; i++) expect(BigInt(rounds[i][2]) > BigInt(rounds[i - 1][2])).toBe(true);
  });

  it('a guest halted with its LAPIC timer armed wakes up in the new VM', async () => {
    const elf = buildGuest([join(GUESTS, 'selftest/sleeper.c')], join(tempDir('minivmm-sleeper-'), 'sleeper.elf'));
    let g = GuestRunner.boot(emu(), { image: elf });
    void g.start();
    try {
      for (let n = 1; n <= 3; n++) {
        await g.waitFor(new RegExp(`sleeping ${n}\n`));
        // Pause once it is asleep: halted, the one-shot timer counting.
        for (;;) {
          await g.pause();
          const s = g.vcpu.getState();
          if (s.mpState === 'halted' && s.lapic.readUInt32LE(0x390) > 0) break;
          void g.start();
          await new Promise((r) => setImmediate(r));
        }
        g = await moveToNewVm(g);
        await g.waitFor(new RegExp(`woke ${n}\n`));
      }
      await g.pause();
    } finally { g.close(); g.mem.unmap(); }
    expect(g.fatal).toBeNull();
    expect(g.output).not.toMatch(/BACKWARDS|sleeper:/);
    expect([...g.output.matchAll(/^woke (\d+)$/gm)].map((m) => Number(m[1]))).toEqual([1, 2, 3]);
  });
});
