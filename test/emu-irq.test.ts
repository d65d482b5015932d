// Interrupts and exceptions on emu, checked by a guest that checks its own results
// (tools/guests/selftest/irqtest.c): exceptions that return, nested interrupts and EOI, TPR, the
// LAPIC timer, "sti; hlt", IOAPIC masking and level triggering, the 8259 and the PIT, the TSC MSR,
// and a whole 8-byte MMIO access. The test plays the devices: it drives GSIs on request and
// answers the guest's MMIO, and binds an irqfd and ioeventfds the guest rings.
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeWith } from './facility.js';
import { tempDir } from './harness.js';
import { GUESTS, buildGuest, emu } from './emu-helpers.js';
import { GuestRunner } from '../tools/emu/driver.js';
import { PULSE_GSI, RAISE_GSI, LOWER_GSI, SIGNAL_IRQFD, MMIO_EVENTS, PIO_EVENTS, PIO_DOORBELL, MMIO_DOORBELL } from './emu-ports.js';
import { eventfd, read, write, close, EFD_CLOEXEC, EFD_NONBLOCK } from '../src/libc.js';

const CHECKS = ['de', 'de_again', 'ud', 'gp_msr', 'gp_wrmsr', 'int3', 'pf_read', 'pf_write', 'int_n', 'self_ipi', 'nested',
  'eoi_priority', 'tpr', 'timer_counts', 'timer_oneshot', 'timer_oneshot_done', 'timer_periodic', 'sti_hlt', 'ioapic_mask',
  'ioapic_level', 'pic', 'pic_isr', 'pit_count', 'pit_irq0', 'tsc_msr', 'mmio64', 'ioeventfd', 'irqfd'];
const TEST_MMIO = 0xd0000000;

describeWith(['emu'], 'interrupts and exceptions on emu (a self-checking guest)', () => {
  it('every check passes', async () => {
    const dir = tempDir('minivmm-irqtest-');
    const elf = buildGuest([join(GUESTS, 'selftest/irqtest.c')], join(dir, 'irqtest.elf'));
    const g = GuestRunner.boot(emu(), { image: elf });
    const mmio: string[] = [];
    const [irqfd, mmioDoorbell, pioDoorbell] = [0, 1, 2].map(() => eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    g.vm.irqfd(irqfd, 12, true);
    g.vm.ioeventfd(mmioDoorbell, MMIO_DOORBELL, 4, { datamatch: 7 }, true);
    g.vm.ioeventfd(pioDoorbell, PIO_DOORBELL, 2, { pio: true }, true);
    const drain = (fd: number) => { const b = Buffer.alloc(8); try { read('eventfd', fd, b); return Number(b.readBigUInt64LE()); } catch { return 0; } };
    g.onPort = (port, isWrite, value) => {
      if (isWrite && port === PULSE_GSI) { g.vm.irqLine(value, 1); g.vm.irqLine(value, 0); return 0; }
      if (isWrite && (port === RAISE_GSI || port === LOWER_GSI)) { g.vm.irqLine(value, port === RAISE_GSI ? 1 : 0); return 0; }
      if (isWrite && port === SIGNAL_IRQFD) { const one = Buffer.alloc(8); one.writeBigUInt64LE(1n); write('eventfd', irqfd, one); return 0; }
      if (!isWrite && port === MMIO_EVENTS) return drain(mmioDoorbell);
      if (!isWrite && port === PIO_EVENTS) return drain(pioDoorbell);
      return undefined;
    };
    g.onMmio = (addr, write, data) => {
      if (addr < TEST_MMIO || addr >= TEST_MMIO + 0x2000) return false;
      mmio.push(`${write ? 'write' : 'read'} 0x${addr.toString(16)} ${data.length}${write ? ` 0x${(data.length === 8 ? data.readBigUInt64LE() : BigInt(data.readUIntLE(0, data.length))).toString(16)}` : ''}`);
      if (!write) data.writeBigUInt64LE(0x8877665544332211n);
      return true;
    };
    try { await g.runToEnd(60_000); } finally { g.vm.irqfd(irqfd, 12, false); g.close(); [irqfd, mmioDoorbell, pioDoorbell].forEach(close); }
    const failed = g.output.split('\n').filter((l) => l.startsWith('FAIL'));
    expect(failed).toEqual([]);
    expect(g.fatal).toBeNull();
    for (const c of CHECKS) expect(g.output).toContain(`ok ${c}\n`);
    expect(g.exitCode).toBe(0);
    // One access each, whole (Unicorn splits 8-byte MMIO in two); doorbell writes that match an
    // ioeventfd are no exits at all.
    expect(mmio).toEqual(['write 0xd0000000 8 0x1122334455667788', 'read 0xd0000008 8', 'write 0xd0001000 4 0x6']);
  });
});
