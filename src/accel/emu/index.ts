// The emu accelerator: QEMU's TCG through Unicorn (the system's libunicorn, GPLv2, loaded at run
// time), for machines without /dev/kvm. The CPU runs in the C shim (shim.c); the platform that
// KVM keeps in the kernel (LAPIC, IOAPIC, 8259 PICs, 8254 PIT, irqfd/ioeventfd) is here, so the
// VMM sees the same exits and the same neutral state from both accelerators.
//
// Limits: one vCPU per VM; with Unicorn 2.0 only identity-mapped page tables (the toy guests'
// boot contract; a guest that maps memory elsewhere is stopped with a clear message); CR8 is not
// tied to the LAPIC's TPR (use the MMIO register); no NMI, SMI, INIT/SIPI or TSC-deadline timer.
import {
  AccelUnavailable, type Accelerator, type AccelPrivate, type IoeventfdOptions, type PlatformState, type Vm,
} from '../index.js';
import { GiB, type GuestMemory } from '../../memory.js';
import { loadShim, unicornVersion, ShimVcpu } from './shim.js';
import { EmuVcpu, type Platform } from './cpu.js';
import { Ioapic, IOAPIC_PINS } from './ioapic.js';
import { Pic } from './pic.js';
import { Pit } from './pit.js';

const now = (): bigint => process.hrtime.bigint();
/** Guest-physical space below 4 GiB that is not RAM: MMIO (devices, IOAPIC, LAPIC). */
const MMIO_END = 4 * GiB;

class EmuVm implements Vm, Platform {
  readonly kind = 'emu' as const;
  readonly vcpus: readonly EmuVcpu[];
  memory: GuestMemory | undefined;
  private readonly shim: ShimVcpu;
  private readonly cpu: EmuVcpu;
  private readonly ioapic: Ioapic;
  private readonly pic: Pic;
  private readonly pit: Pit;
  private closed = false;

  constructor() {
    this.shim = new ShimVcpu();
    this.ioapic = new Ioapic({
      deliver: (vector, level, dest, logical, mode) => {
        if (mode === 7) return; // ExtINT: the 8259 drives LINT0 itself
        if (mode > 1) return; // SMI, NMI, INIT: not modelled
        if (!logical && dest !== this.cpu.id && dest !== 0xff) return;
        this.cpu.lapic.accept(vector, level);
        this.cpu.notify();
      },
    });
    this.cpu = new EmuVcpu(0, this.shim, this, (vector) => this.ioapic.eoi(vector));
    this.pic = new Pic(() => { if (this.cpu) this.cpu.notify(); });
    this.pit = new Pit((level) => this.irqLine(0, level));
    this.vcpus = [this.cpu];
  }

  setMemory(mem: GuestMemory): void {
    if (this.memory) throw new Error('emu: the VM already has its memory');
    for (const r of mem.regions) this.shim.mapRam(r.gpa, r.size, r.hostAddr);
    const lowEnd = mem.regions[0].gpa + mem.regions[0].size;
    if (lowEnd < MMIO_END) this.shim.mapMmio(lowEnd, MMIO_END - lowEnd);
    this.memory = mem;
  }

  configureCpus(saved?: AccelPrivate): void { void saved; /* the CPU model is Unicorn's; nothing to fix */ }
  cpuModel(): AccelPrivate {
    const [major, minor] = unicornVersion();
    return { kind: 'emu', data: { unicorn: `${major}.${minor}` } };
  }

  // ---- interrupt lines ----

  irqLine(gsi: number, level: 0 | 1): void {
    if (gsi < 0 || gsi >= IOAPIC_PINS) throw new RangeError(`emu: no GSI ${gsi}`);
    this.ioapic.setLevel(gsi, level);
    if (gsi < 16) this.pic.setIrq(gsi, level);
  }
  pulse(gsi: number): void { this.irqLine(gsi, 1); this.irqLine(gsi, 0); }

  irqfd(efd: number, gsi: number, assign: boolean): void {
    if (gsi < 0 || gsi >= IOAPIC_PINS) throw new RangeError(`emu: no GSI ${gsi}`);
    this.shim.irqfd(efd, gsi, assign);
  }
  ioeventfd(efd: number, addr: number, len: number, opts: IoeventfdOptions, assign: boolean): void {
    this.shim.ioeventfd(efd, addr, len, opts.pio ?? false, opts.datamatch, assign);
  }

  // ---- Platform (for the vCPU) ----

  port(port: number): { in(size: number): number; out(size: number, value: number): void } | null {
    if (this.pic.handles(port)) return { in: () => this.pic.read(port), out: (_s, v) => this.pic.write(port, v) };
    if (this.pit.handles(port)) return { in: () => this.pit.read(port, now()), out: (_s, v) => this.pit.write(port, v, now()) };
    return null;
  }
  ioapicRead(off: number): number { return this.ioapic.read(off); }
  ioapicWrite(off: number, value: number): void { this.ioapic.write(off, value); this.cpu.notify(); }
  timersFired(t: bigint): void { this.pit.update(t); }
  timerDeadline(): bigint { return this.pit.deadline; }
  picOutput(): boolean { return this.pic.output; }
  picAcknowledge(): number { return this.pic.acknowledge(); }

  // ---- state ----

  getPlatformState(): PlatformState {
    return { pic: this.pic.getState(), ioapic: this.ioapic.getState(), pit: this.pit.getState() };
  }
  setPlatformState(s: PlatformState): void {
    this.pic.setState(s.pic);
    this.ioapic.setState(s.ioapic);
    this.pit.setState(s.pit, now());
    this.cpu.notify();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cpu.close();
    this.shim.destroy();
  }
}

export class EmuAccelerator implements Accelerator {
  readonly kind = 'emu' as const;
  readonly description: string;

  private constructor() {
    const [major, minor] = unicornVersion();
    this.description = `emu (Unicorn ${major}.${minor}, QEMU TCG)`;
  }

  /** The emu accelerator, or AccelUnavailable with one line saying why and how to fix it. */
  static open(): Accelerator {
    const why = loadShim();
    if (why) throw new AccelUnavailable(`emu accelerator unavailable: ${why}`);
    return new EmuAccelerator();
  }

  createVm(smp: number): Vm {
    if (smp !== 1) throw new Error(`the emu accelerator runs one vCPU: use --smp 1 (asked for ${smp})`);
    return new EmuVm();
  }
}
