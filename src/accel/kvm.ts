// The KVM accelerator: the seam's Vm/Vcpu over /dev/kvm (ioctl wrappers in src/kvm.ts). KVM's
// structs are translated to and from the neutral schema here and nowhere else.
import { readdirSync } from 'node:fs';
import ffi from '../ffi.js';
import { tgkill, SIGUSR2, errnoName, SyscallError } from '../libc.js';
import { Kvm, VmFd, VcpuFd, KVM, CAP, EXIT, RUN, SIZE, SREGS, PIC_MASTER, PIC_SLAVE, IOAPIC, exitName } from '../kvm.js';
import { translate, type GuestMemory } from '../memory.js';
import {
  AccelUnavailable, GPR_NAMES, SEGMENT_NAMES,
  type Accelerator, type Vm, type Vcpu, type VcpuExit, type CpuState, type PlatformState, type PicState, type PitState,
  type AccelPrivate, type Segment, type FpuState, type MpState, type IoeventfdOptions,
} from './index.js';

const { DataType: T } = ffi;
const EINTR = 4, EAGAIN = 11;
const TSS_ADDR = 0xfffbd000;

/** Capabilities the VMM relies on; a KVM without one of them is refused at start-up. */
const REQUIRED_CAPS: [keyof typeof CAP, string][] = [
  ['IRQCHIP', 'an in-kernel irqchip'], ['USER_MEMORY', 'user memory regions'], ['SET_TSS_ADDR', 'KVM_SET_TSS_ADDR'],
  ['PIT2', 'an in-kernel PIT'], ['IRQFD', 'irqfds'], ['IOEVENTFD', 'ioeventfds'], ['IMMEDIATE_EXIT', 'immediate_exit'],
];

/** MSRs that carry guest state; the ones this KVM refuses are dropped when the VM is made. TSC last. */
const MSR_CANDIDATES = [
  0x174, 0x175, 0x176, // SYSENTER_CS/ESP/EIP
  0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000102, // STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE
  0x277, 0x1a0, // PAT, MISC_ENABLE
  0x10, // TSC
];

// The signal's only job is to interrupt KVM_RUN on a pool thread; Node's handler does nothing.
process.on('SIGUSR2', () => {});

export class KvmAccelerator implements Accelerator {
  readonly kind = 'kvm' as const;
  readonly description: string;
  /** XSAVE state (KVM_CAP_XSAVE) or only the legacy FPU state. */
  private constructor(private kvm: Kvm, private xsave: boolean) { this.description = 'KVM'; }

  /** Why KVM cannot run guests here (one line), or null: open, check, close (QMP query-kvm's `present`). */
  static unavailable(): string | null {
    try { KvmAccelerator.open().kvm.close(); return null; } catch (e) { if (e instanceof AccelUnavailable) return e.message; throw e; }
  }

  /** Opens /dev/kvm; AccelUnavailable (one line) when it is missing, closed to us, or lacks a capability. */
  static open(): KvmAccelerator {
    let kvm: Kvm;
    try { kvm = new Kvm(); } catch (e) {
      const code = e instanceof SyscallError ? e.code : '';
      if (code === 'ENOENT') throw new AccelUnavailable('no /dev/kvm on this host');
      if (code === 'EACCES' || code === 'EPERM') throw new AccelUnavailable(`cannot open /dev/kvm: ${code} (are you in the kvm group?)`);
      throw new AccelUnavailable(`/dev/kvm unusable: ${(e as Error).message}`);
    }
    for (const [cap, what] of REQUIRED_CAPS) {
      if (kvm.checkExtension(CAP[cap]) <= 0) { kvm.close(); throw new AccelUnavailable(`this KVM lacks ${what} (KVM_CAP_${cap})`); }
    }
    return new KvmAccelerator(kvm, kvm.checkExtension(CAP.XSAVE) > 0);
  }

  createVm(smp: number): KvmVm {
    const vm = this.kvm.createVm();
    vm.setTssAddr(TSS_ADDR);
    vm.createIrqchip();
    vm.createPit2();
    const runSize = this.kvm.vcpuMmapSize();
    const fds = Array.from({ length: smp }, (_, i) => new VcpuFd(vm.createVcpu(i), i, runSize));
    return new KvmVm(this.kvm, vm, fds, this.xsave);
  }
}

export class KvmVm implements Vm {
  readonly kind = 'kvm' as const;
  readonly vcpus: KvmVcpu[];
  memory: GuestMemory | undefined;
  private cpuid?: Buffer;

  constructor(private kvm: Kvm, readonly fd: VmFd, vcpuFds: VcpuFd[], xsave: boolean) {
    this.vcpus = vcpuFds.map((v) => new KvmVcpu(v, this, xsave));
    const msrs = MSR_CANDIDATES.filter((idx) => vcpuFds[0].getMsrs([idx]).size === 1);
    for (const v of this.vcpus) v.msrIndices = msrs;
  }

  setMemory(mem: GuestMemory): void {
    if (this.memory) throw new Error('the VM already has its RAM');
    mem.regions.forEach((r, slot) => this.fd.setUserMemoryRegion(slot, r.gpa, r.size, r.hostAddr));
    this.memory = mem;
  }

  configureCpus(saved?: AccelPrivate): void {
    const table = saved?.kind === 'kvm' && Buffer.isBuffer(saved.data.cpuid) ? saved.data.cpuid : this.kvm.supportedCpuid();
    for (const v of this.vcpus) v.fd.setCpuid2(table);
    this.cpuid = table;
  }

  cpuModel(): AccelPrivate { return { kind: 'kvm', data: { cpuid: this.cpuid ?? null } }; }

  irqLine(gsi: number, level: 0 | 1): void { this.fd.irqLine(gsi, level); }
  irqfd(efd: number, gsi: number, assign: boolean): void { this.fd.irqfd(efd, gsi, !assign); }
  ioeventfd(efd: number, addr: number, len: number, opts: IoeventfdOptions, assign: boolean): void {
    this.fd.ioeventfd(efd, addr, len, { ...opts, deassign: !assign });
  }

  getPlatformState(): PlatformState {
    return {
      pic: [decodePic(this.fd.getIrqchip(PIC_MASTER)), decodePic(this.fd.getIrqchip(PIC_SLAVE))],
      ioapic: decodeIoapic(this.fd.getIrqchip(IOAPIC)),
      pit: decodePit(this.fd.getPit2()),
    };
  }

  setPlatformState(s: PlatformState): void {
    this.fd.setIrqchip(encodePic(PIC_MASTER, s.pic[0]));
    this.fd.setIrqchip(encodePic(PIC_SLAVE, s.pic[1]));
    this.fd.setIrqchip(encodeIoapic(s.ioapic));
    this.fd.setPit2(encodePit(s.pit));
  }

  close(): void { this.fd.close(); }
}

const MP_STATES: MpState[] = ['runnable', 'uninitialized', 'init-received', 'halted', 'sipi-received'];

export class KvmVcpu implements Vcpu {
  msrIndices: number[] = [];
  constructor(readonly fd: VcpuFd, private vm: KvmVm, private xsave: boolean) {}
  get id(): number { return this.fd.id; }

  async run(): Promise<VcpuExit> {
    const r = await (ffi.load({
      library: 'libc', funcName: 'ioctl', retType: T.I32, paramsType: [T.I32, T.U64, T.U64],
      paramsValue: [this.fd.fd, KVM.RUN, 0], errno: true, runInNewThread: true,
    }) as unknown as Promise<{ value: number; errnoCode: number }>);
    if (r.value === -1) {
      if (r.errnoCode === EINTR || r.errnoCode === EAGAIN) return { kind: 'interrupted' };
      throw new Error(`KVM_RUN failed: ${errnoName(r.errnoCode)}`);
    }
    return this.decodeExit();
  }

  private decodeExit(): VcpuExit {
    const run = this.fd.run;
    const reason = run.readUInt32LE(RUN.exitReason);
    switch (reason) {
      case EXIT.IO: {
        const size = run[RUN.io.size] as 1 | 2 | 4, count = run.readUInt32LE(RUN.io.count);
        const off = Number(run.readBigUInt64LE(RUN.io.dataOffset));
        return { kind: 'io', port: run.readUInt16LE(RUN.io.port), size, write: run[RUN.io.direction] === 1, count, data: run.subarray(off, off + size * count) };
      }
      case EXIT.MMIO: {
        const len = run.readUInt32LE(RUN.mmio.len);
        return { kind: 'mmio', addr: Number(run.readBigUInt64LE(RUN.mmio.physAddr)), write: run[RUN.mmio.isWrite] !== 0, data: run.subarray(RUN.mmio.data, RUN.mmio.data + len) };
      }
      case EXIT.INTR: return { kind: 'interrupted' };
      case EXIT.HLT: return { kind: 'hlt' };
      case EXIT.SYSTEM_EVENT: {
        const type = run.readUInt32LE(RUN.systemEvent.type); // KVM_SYSTEM_EVENT_SHUTDOWN 1, RESET 2, CRASH 3
        return { kind: 'system-event', type: type === 2 ? 'reset' : type === 3 ? 'crash' : 'shutdown' };
      }
      case EXIT.INTERNAL_ERROR:
        return { kind: 'fatal', message: `guest emulation failure (KVM_EXIT_INTERNAL_ERROR, suberror ${run.readUInt32LE(RUN.internal.suberror)}) on vCPU ${this.id}: ${this.describeRip()}` };
      case EXIT.SHUTDOWN:
        return { kind: 'fatal', message: `guest shut down (triple fault) on vCPU ${this.id}: ${this.describeRip()}` };
      case EXIT.FAIL_ENTRY:
        return { kind: 'fatal', message: `KVM_EXIT_FAIL_ENTRY on vCPU ${this.id}: hardware reason 0x${run.readBigUInt64LE(RUN.failEntry.reason).toString(16)}` };
      default:
        return { kind: 'fatal', message: `unexpected KVM exit ${exitName(reason)} on vCPU ${this.id}` };
    }
  }

  /** "guest RIP 0x…, instruction bytes 0f 38 …" for a failure report. */
  private describeRip(): string {
    const rip = this.fd.getRegs().readBigUInt64LE(16 * 8);
    const sregs = this.fd.getSregs();
    const mem = this.vm.memory;
    if (!mem) return `guest RIP 0x${rip.toString(16)}`;
    const paging = (sregs.readBigUInt64LE(SREGS.cr0) & 0x80000000n) !== 0n;
    const read64 = (gpa: number): bigint => { try { return mem.view(gpa, 8).readBigUInt64LE(); } catch { return 0n; /* a table outside RAM reads as not present */ } };
    const gpa = paging ? translate(read64, sregs.readBigUInt64LE(SREGS.cr3), rip) : Number(rip);
    let bytes = 'unreadable';
    if (gpa !== null) { try { bytes = [...mem.view(gpa, 15)].map((x) => x.toString(16).padStart(2, '0')).join(' '); } catch { /* not RAM */ } }
    return `guest RIP 0x${rip.toString(16)}, instruction bytes ${bytes}`;
  }

  /** immediate_exit covers a KVM_RUN about to start; a signal ends one in progress. */
  requestExit(): void {
    this.fd.run[RUN.immediateExit] = 1;
    // Which pool thread runs this vCPU is not known: signal every thread but the main one.
    for (const tid of readdirSync('/proc/self/task')) {
      if (Number(tid) !== process.pid) { try { tgkill(process.pid, Number(tid), SIGUSR2); } catch { /* thread ended */ } }
    }
  }

  clearExitRequest(): void { this.fd.run[RUN.immediateExit] = 0; }

  tscKhz(): number { return this.fd.tscKhz(); }

  getState(): CpuState {
    const regs = this.fd.getRegs(), sregs = this.fd.getSregs();
    const xsave = this.xsave ? this.fd.getXsave() : null; // without it, the FPU state below is all there is
    const pending = pendingFromBitmap(sregs);
    return {
      regs: Object.fromEntries(GPR_NAMES.map((n, i) => [n, regs.readBigUInt64LE(i * 8)])) as CpuState['regs'],
      segments: Object.fromEntries(SEGMENT_NAMES.map((n) => [n, readSegment(sregs, SREGS[n])])) as CpuState['segments'],
      gdt: { base: sregs.readBigUInt64LE(SREGS.gdt), limit: sregs.readUInt16LE(SREGS.gdt + 8) },
      idt: { base: sregs.readBigUInt64LE(SREGS.idt), limit: sregs.readUInt16LE(SREGS.idt + 8) },
      cr0: sregs.readBigUInt64LE(SREGS.cr0), cr2: sregs.readBigUInt64LE(SREGS.cr2), cr3: sregs.readBigUInt64LE(SREGS.cr3),
      cr4: sregs.readBigUInt64LE(SREGS.cr4), cr8: sregs.readBigUInt64LE(SREGS.cr8),
      efer: sregs.readBigUInt64LE(SREGS.efer), apicBase: sregs.readBigUInt64LE(SREGS.apicBase),
      msrs: [...this.fd.getMsrs(this.msrIndices)].map(([index, value]) => ({ index, value })),
      fpu: decodeFpu(this.fd.getFpu()),
      lapic: this.fd.getLapic(),
      mpState: MP_STATES[this.fd.getMpState()] ?? 'runnable',
      pendingInterrupt: pending,
      accel: { kind: 'kvm', data: { xsave, events: this.fd.getVcpuEvents() } },
    };
  }

  setState(s: CpuState): void {
    const own = s.accel?.kind === 'kvm' ? s.accel.data : undefined;
    const sregs = Buffer.alloc(SIZE.sregs);
    for (const n of SEGMENT_NAMES) writeSegment(sregs, SREGS[n], s.segments[n]);
    sregs.writeBigUInt64LE(s.gdt.base, SREGS.gdt); sregs.writeUInt16LE(s.gdt.limit, SREGS.gdt + 8);
    sregs.writeBigUInt64LE(s.idt.base, SREGS.idt); sregs.writeUInt16LE(s.idt.limit, SREGS.idt + 8);
    for (const r of ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer'] as const) sregs.writeBigUInt64LE(s[r], SREGS[r]);
    sregs.writeBigUInt64LE(s.apicBase, SREGS.apicBase);
    if (s.pendingInterrupt !== null) {
      const v = s.pendingInterrupt;
      sregs.writeBigUInt64LE(1n << BigInt(v % 64), SREGS.interruptBitmap + 8 * Math.floor(v / 64));
    }
    this.fd.setSregs(sregs);
    const regs = Buffer.alloc(SIZE.regs);
    GPR_NAMES.forEach((n, i) => regs.writeBigUInt64LE(s.regs[n], i * 8));
    this.fd.setRegs(regs);
    if (Buffer.isBuffer(own?.xsave)) this.fd.setXsave(own.xsave); else this.fd.setFpu(encodeFpu(s.fpu));
    this.fd.setLapic(s.lapic);
    // Only the MSRs this KVM can hold: a state from another accelerator may carry others.
    const msrs = new Map(s.msrs.filter((m) => this.msrIndices.includes(m.index)).map((m) => [m.index, m.value] as [number, bigint]));
    const n = this.fd.setMsrs(msrs);
    if (n !== msrs.size) throw new Error(`KVM_SET_MSRS set ${n} of ${msrs.size} MSRs`);
    this.fd.setMpState(Math.max(0, MP_STATES.indexOf(s.mpState)));
    if (Buffer.isBuffer(own?.events)) this.fd.setVcpuEvents(own.events);
  }
}

// ---- struct kvm_segment, kvm_fpu, kvm_irqchip, kvm_pit_state2 <-> neutral ----

export const SEG_FLAGS = ['type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] as const;
function readSegment(b: Buffer, off: number): Segment {
  const s = { base: b.readBigUInt64LE(off), limit: b.readUInt32LE(off + 8), selector: b.readUInt16LE(off + 12) } as Segment;
  SEG_FLAGS.forEach((f, i) => { s[f] = b.readUInt8(off + 14 + i); });
  return s;
}
function writeSegment(b: Buffer, off: number, s: Segment): void {
  b.writeBigUInt64LE(s.base, off); b.writeUInt32LE(s.limit >>> 0, off + 8); b.writeUInt16LE(s.selector, off + 12);
  SEG_FLAGS.forEach((f, i) => b.writeUInt8(s[f], off + 14 + i));
}

/** The one pending external interrupt KVM keeps in kvm_sregs.interrupt_bitmap, if any. */
function pendingFromBitmap(sregs: Buffer): number | null {
  for (let w = 0; w < 4; w++) {
    const word = sregs.readBigUInt64LE(SREGS.interruptBitmap + 8 * w);
    if (word) for (let bit = 0; bit < 64; bit++) if (word & (1n << BigInt(bit))) return w * 64 + bit;
  }
  return null;
}

export const FPU = { st: 0, fcw: 128, fsw: 130, ftw: 132, fop: 134, fip: 136, fdp: 144, xmm: 152, mxcsr: 408 } as const;
function decodeFpu(b: Buffer): FpuState {
  return {
    fcw: b.readUInt16LE(FPU.fcw), fsw: b.readUInt16LE(FPU.fsw), ftw: b[FPU.ftw], fop: b.readUInt16LE(FPU.fop),
    fip: b.readBigUInt64LE(FPU.fip), fdp: b.readBigUInt64LE(FPU.fdp), mxcsr: b.readUInt32LE(FPU.mxcsr),
    st: Buffer.from(b.subarray(FPU.st, FPU.st + 128)), xmm: Buffer.from(b.subarray(FPU.xmm, FPU.xmm + 256)),
  };
}
function encodeFpu(f: FpuState): Buffer {
  const b = Buffer.alloc(SIZE.fpu);
  b.writeUInt16LE(f.fcw, FPU.fcw); b.writeUInt16LE(f.fsw, FPU.fsw); b[FPU.ftw] = f.ftw; b.writeUInt16LE(f.fop, FPU.fop);
  b.writeBigUInt64LE(f.fip, FPU.fip); b.writeBigUInt64LE(f.fdp, FPU.fdp); b.writeUInt32LE(f.mxcsr, FPU.mxcsr);
  f.st.copy(b, FPU.st, 0, 128); f.xmm.copy(b, FPU.xmm, 0, 256);
  return b;
}

/** struct kvm_irqchip: chip_id u32, pad u32, then the chip's state. */
export const IRQCHIP_DATA = 8;
export const PIC_FIELDS: (keyof PicState)[] = [
  'lastIrr', 'irr', 'imr', 'isr', 'priorityAdd', 'irqBase', 'readRegSelect', 'poll', 'specialMask', 'initState',
  'autoEoi', 'rotateOnAutoEoi', 'specialFullyNestedMode', 'init4', 'elcr', 'elcrMask',
];
function decodePic(b: Buffer): PicState {
  return Object.fromEntries(PIC_FIELDS.map((f, i) => [f, b[IRQCHIP_DATA + i]])) as unknown as PicState;
}
function encodePic(chip: number, p: PicState): Buffer {
  const b = Buffer.alloc(SIZE.irqchip); b.writeUInt32LE(chip, 0);
  PIC_FIELDS.forEach((f, i) => { b[IRQCHIP_DATA + i] = p[f]; });
  return b;
}
const IOAPIC_PINS = 24;
export const IOAPIC_OFF = { base: 0, ioregsel: 8, id: 12, irr: 16, redirtbl: 24 } as const;
function decodeIoapic(b: Buffer): PlatformState['ioapic'] {
  const o = IRQCHIP_DATA;
  return {
    base: Number(b.readBigUInt64LE(o + IOAPIC_OFF.base)), ioregsel: b.readUInt32LE(o + IOAPIC_OFF.ioregsel), id: b.readUInt32LE(o + IOAPIC_OFF.id),
    irr: b.readUInt32LE(o + IOAPIC_OFF.irr),
    redirtbl: Array.from({ length: IOAPIC_PINS }, (_, i) => b.readBigUInt64LE(o + IOAPIC_OFF.redirtbl + 8 * i)),
  };
}
function encodeIoapic(s: PlatformState['ioapic']): Buffer {
  const b = Buffer.alloc(SIZE.irqchip), o = IRQCHIP_DATA;
  b.writeUInt32LE(IOAPIC, 0);
  b.writeBigUInt64LE(BigInt(s.base), o + IOAPIC_OFF.base); b.writeUInt32LE(s.ioregsel, o + IOAPIC_OFF.ioregsel);
  b.writeUInt32LE(s.id, o + IOAPIC_OFF.id); b.writeUInt32LE(s.irr, o + IOAPIC_OFF.irr);
  s.redirtbl.slice(0, IOAPIC_PINS).forEach((v, i) => b.writeBigUInt64LE(v, o + IOAPIC_OFF.redirtbl + 8 * i));
  return b;
}

/** struct kvm_pit_channel_state (24 bytes) x 3, then flags u32. */
export const PIT_CHANNEL = 24, PIT_FLAGS = 72;
export const PIT_BYTES = ['countLatched', 'statusLatched', 'status', 'readState', 'writeState', 'writeLatch', 'rwMode', 'mode', 'bcd', 'gate'] as const;
function decodePit(b: Buffer): PitState {
  const channels = [0, 1, 2].map((c) => {
    const o = c * PIT_CHANNEL;
    const ch = { count: b.readUInt32LE(o), latchedCount: b.readUInt16LE(o + 4), countLoadTime: b.readBigInt64LE(o + 16) } as PitState['channels'][number];
    PIT_BYTES.forEach((f, i) => { ch[f] = b[o + 6 + i]; });
    return ch;
  });
  return { channels, flags: b.readUInt32LE(PIT_FLAGS) };
}
function encodePit(p: PitState): Buffer {
  const b = Buffer.alloc(SIZE.pitState2);
  p.channels.slice(0, 3).forEach((ch, c) => {
    const o = c * PIT_CHANNEL;
    b.writeUInt32LE(ch.count, o); b.writeUInt16LE(ch.latchedCount, o + 4); b.writeBigInt64LE(ch.countLoadTime, o + 16);
    PIT_BYTES.forEach((f, i) => { b[o + 6 + i] = ch[f]; });
  });
  b.writeUInt32LE(p.flags, PIT_FLAGS);
  return b;
}
