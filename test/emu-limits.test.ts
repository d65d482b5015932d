// What the emu accelerator refuses, clearly: page tables it cannot translate (Unicorn 2.0), an
// exception with no IDT to take it (a triple fault, reported with RIP and instruction bytes),
// and more than one vCPU.
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeWith } from './facility.js';
import { tempDir } from './harness.js';
import { GUESTS, buildGuest, emu } from './emu-helpers.js';
import { GuestRunner } from '../tools/emu/driver.js';
import { unicornVersion } from '../src/accel/emu/shim.js';
import { writeFileSync } from 'node:fs';

/** An ELF64 executable of one segment at 1 MiB whose entry, at 0x100100, is `code`. */
function rawElf(code: Buffer): Buffer {
  const b = Buffer.alloc(0x1000);
  b.writeUInt32BE(0x7f454c46, 0); b[4] = 2; b[5] = 1; b[6] = 1; // ELF64, little endian, version 1
  b.writeUInt16LE(2, 16); b.writeUInt16LE(62, 18); b.writeUInt32LE(1, 20); // ET_EXEC, x86-64
  b.writeBigUInt64LE(0x100100n, 24); b.writeBigUInt64LE(64n, 32); // entry, program headers
  b.writeUInt16LE(64, 52); b.writeUInt16LE(56, 54); b.writeUInt16LE(1, 56);
  b.writeUInt32LE(1, 64); b.writeUInt32LE(5, 68); // PT_LOAD, R+X, from file offset 0
  for (const [off, v] of [[80, 0x100000n], [88, 0x100000n], [96, 0x1000n], [104, 0x1000n], [112, 0x1000n]] as const) b.writeBigUInt64LE(v, off);
  code.copy(b, 0x100);
  return b;
}

describeWith(['emu'], 'emu: what it refuses', () => {
  it('a guest mapping memory away from identity is stopped with a clear message (Unicorn 2.0)', async () => {
    const [major, minor] = unicornVersion();
    if (major > 2 || minor >= 1) return; // Unicorn 2.1 translates through the page tables
    const elf = buildGuest([join(GUESTS, 'selftest/remap.c')], join(tempDir('minivmm-remap-'), 'remap.elf'));
    const g = GuestRunner.boot(emu(), { image: elf });
    try { await g.runToEnd(60_000); } finally { g.close(); }
    expect(g.output).toBe('switching page tables\n');
    expect(g.fatal).toMatch(/maps virtual memory away from identity \(CR3 0x600000\).*Unicorn 2\.0 runs identity-mapped guests only.*guest RIP 0x[0-9a-f]+, instruction bytes /);
  });

  it('an exception with no IDT is a triple fault naming RIP and the instruction', async () => {
    const elf = join(tempDir('minivmm-ud2-'), 'ud2.elf');
    writeFileSync(elf, rawElf(Buffer.from([0x0f, 0x0b]))); // ud2 at the entry; the boot contract leaves no IDT
    const g = GuestRunner.boot(emu(), { image: elf });
    try { await g.runToEnd(30_000); } finally { g.close(); }
    expect(g.fatal).toMatch(/^guest triple fault \(#UD could not be delivered: IDT base 0x0 limit 0x0\) at guest RIP 0x100100, instruction bytes 0f 0b /);
  });

  it('more than one vCPU is refused in one line', () => {
    expect(() => emu().createVm(2)).toThrow(/^the emu accelerator runs one vCPU: use --smp 1 \(asked for 2\)$/);
  });
});
