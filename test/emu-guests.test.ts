// The built-in toy guests on the emu accelerator, and (where /dev/kvm exists) the same guests
// under KVM through today's CLI: the serial output must be the same, but for the TSC values the
// counter prints (two runs never read the same clock).
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeWith } from './facility.js';
import { ROOT, runMinivmm } from './harness.js';
import { emu } from './emu-helpers.js';
import { GuestRunner, type BootOptions } from '../tools/emu/driver.js';
import { GiB, MiB } from '../src/memory.js';

const guest = (name: string): string => join(ROOT, 'dist/guests', `${name}.elf`);

async function onEmu(o: BootOptions): Promise<GuestRunner> {
  const g = GuestRunner.boot(emu(), o);
  try { await g.runToEnd(120_000); } finally { g.close(); }
  expect(g.fatal).toBeNull();
  return g;
}

/** The 2 MiB chunks memtest walks: RAM above 4 MiB, per region ([0, 3 GiB) then from 4 GiB). */
const memtestChunks = (ram: number): number => Math.min(ram, 3 * GiB) / (2 * MiB) - 2 + Math.max(0, ram - 3 * GiB) / (2 * MiB);

describeWith(['emu'], 'built-in guests on emu', () => {
  it('hello greets with the boot info', async () => {
    const g = await onEmu({ image: guest('hello') });
    expect(g.output).toBe(`Hello from minivmm guest\nram=${256 * MiB} cpus=1 tsc_khz=${g.vcpu.tscKhz()}\n`);
    expect(g.exitCode).toBe(0);
  });

  it('counter counts, keeps its RAM and its TSC moves forward', async () => {
    const g = await onEmu({ image: guest('counter'), cmdline: 'iters=50000 rounds=6' });
    const lines = g.output.trim().split('\n');
    expect(lines.at(-1)).toBe('counter done');
    const rounds = lines.slice(0, -1).map((l) => /^counter (\d+) tsc (\d+) round (\d+)$/.exec(l));
    expect(rounds.every((m) => m !== null)).toBe(true);
    rounds.forEach((m, i) => { expect(Number(m![3])).toBe(i + 1); expect(Number(m![1])).toBe(50000 * (i + 1)); });
    const tsc = rounds.map((m) => BigInt(m![2]));
    for (let i = 1; i < tsc.length; i++) expect(tsc[i] > tsc[i - 1]).toBe(true);
    expect(g.exitCode).toBe(0);
  });

  it('the event loop stays free while a guest computes, and a pause takes effect at once', async () => {
    const g = GuestRunner.boot(emu(), { image: guest('counter'), cmdline: 'iters=4000000000 rounds=0' });
    void g.start();
    let worst = 0; // timer lateness on the main thread: the vCPU runs on threads of its own
    for (let i = 0; i < 50; i++) {
      const t0 = performance.now();
      await new Promise((r) => setTimeout(r, 1));
      worst = Math.max(worst, performance.now() - t0);
    }
    const t0 = performance.now();
    await g.pause();
    const pauseMs = performance.now() - t0;
    g.close();
    expect(g.fatal).toBeNull();
    expect(g.output).toBe(''); // still in its first round: it was computing all along
    expect(worst).toBeLessThan(200); // generous sanity bounds (a shared, loaded machine)
    expect(pauseMs).toBeLessThan(1000);
  });

  for (const ram of [256 * MiB, 5 * GiB]) {
    it(`memtest finds every chunk of ${ram / MiB} MiB (RAM above 4 GiB too)`, async () => {
      const g = await onEmu({ image: guest('memtest'), memory: ram });
      expect(g.output).toBe(`memtest ok chunks=${memtestChunks(ram)} ram=${ram}\n`);
      expect(g.exitCode).toBe(0);
    });
  }
});

describeWith(['emu', 'kvm'], 'built-in guests: emu prints what KVM prints', () => {
  const sameOutput = (s: string) => s.replace(/tsc \d+/g, 'tsc N');
  for (const [name, append] of [['hello', ''], ['counter', 'iters=2000 rounds=3'], ['memtest', '']]) {
    it(name, async () => {
      const kvm = await runMinivmm(['run', '--guest', name, ...(append ? ['--append', append] : [])], { timeoutMs: 120_000 });
      expect(kvm.code, kvm.stderr).toBe(0);
      const g = await onEmu({ image: guest(name), cmdline: append });
      expect(g.exitCode).toBe(0);
      expect(sameOutput(g.output)).toBe(sameOutput(kvm.stdout));
    });
  }
});
