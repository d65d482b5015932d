// KVM ioctls, one thin typed wrapper each (rust-vmm kvm-ioctls style). Struct layouts are
// defined once here (include/uapi/linux/kvm.h and asm/kvm.h, x86-64).
import { ioctl, ioctlBuf, iocFamily, open, close, O_RDWR, O_CLOEXEC, mmap, PROT_READ, PROT_WRITE, MAP_SHARED, bufferAt } from './libc.js';

const { io, ior, iow, iowr } = iocFamily(0xae); // KVMIO

/** Struct sizes. */
export const SIZE = {
  regs: 144, sregs: 312, fpu: 416, lapic: 1024, xsave: 4096, irqchip: 520, pitState2: 112,
  vcpuEvents: 64, mpState: 4, memoryRegion: 32, irqfd: 32, ioeventfd: 64, pitConfig: 64, msrEntry: 16, cpuidEntry: 40,
} as const;

export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, 8),
  CREATE_VCPU: io(0x41),
  SET_USER_MEMORY_REGION: iow(0x46, SIZE.memoryRegion),
  SET_TSS_ADDR: io(0x47),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, 8),
  GET_IRQCHIP: iowr(0x62, SIZE.irqchip),
  SET_IRQCHIP: ior(0x63, SIZE.irqchip),
  IRQFD: iow(0x76, SIZE.irqfd),
  CREATE_PIT2: iow(0x77, SIZE.pitConfig),
  IOEVENTFD: iow(0x79, SIZE.ioeventfd),
  RUN: io(0x80),
  GET_REGS: ior(0x81, SIZE.regs),
  SET_REGS: iow(0x82, SIZE.regs),
  GET_SREGS: ior(0x83, SIZE.sregs),
  SET_SREGS: iow(0x84, SIZE.sregs),
  GET_MSRS: iowr(0x88, 8),
  SET_MSRS: iow(0x89, 8),
  GET_FPU: ior(0x8c, SIZE.fpu),
  SET_FPU: iow(0x8d, SIZE.fpu),
  GET_LAPIC: ior(0x8e, SIZE.lapic),
  SET_LAPIC: iow(0x8f, SIZE.lapic),
  SET_CPUID2: iow(0x90, 8),
  GET_MP_STATE: ior(0x98, SIZE.mpState),
  SET_MP_STATE: iow(0x99, SIZE.mpState),
  GET_PIT2: ior(0x9f, SIZE.pitState2),
  SET_PIT2: iow(0xa0, SIZE.pitState2),
  GET_VCPU_EVENTS: ior(0x9f, SIZE.vcpuEvents),
  SET_VCPU_EVENTS: iow(0xa0, SIZE.vcpuEvents),
  GET_TSC_KHZ: io(0xa3),
  GET_XSAVE: ior(0xa4, SIZE.xsave),
  SET_XSAVE: iow(0xa5, SIZE.xsave),
} as const;

export const CAP = { IRQCHIP: 0, HLT: 1, USER_MEMORY: 3, SET_TSS_ADDR: 4, NR_VCPUS: 9, PIT2: 33, IRQFD: 32, IOEVENTFD: 36, IMMEDIATE_EXIT: 136, MAX_VCPUS: 66, XSAVE: 55, VCPU_EVENTS: 41 } as const;

export const EXIT = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7, SHUTDOWN: 8,
  FAIL_ENTRY: 9, INTR: 10, INTERNAL_ERROR: 17, SYSTEM_EVENT: 24,
} as const;
export const exitName = (r: number): string => Object.entries(EXIT).find(([, v]) => v === r)?.[0] ?? `exit ${r}`;

/** Offsets into struct kvm_run. */
export const RUN = {
  immediateExit: 1, exitReason: 8,
  io: { direction: 32, size: 33, port: 34, count: 36, dataOffset: 40 },
  mmio: { physAddr: 32, data: 40, len: 48, isWrite: 52 },
  internal: { suberror: 32, ndata: 36, data: 40 },
  failEntry: { reason: 32 },
  systemEvent: { type: 32 },
} as const;

export const PIC_MASTER = 0, PIC_SLAVE = 1, IOAPIC = 2;
export const IOEVENTFD_FLAG = { DATAMATCH: 1, PIO: 2, DEASSIGN: 4 } as const;

/** Offsets into struct kvm_sregs: segments (struct kvm_segment, 24 bytes), descriptor tables, control registers. */
export const SREGS = { cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168, gdt: 192, idt: 208, cr0: 224, cr2: 232, cr3: 240, cr4: 248, cr8: 256, efer: 264, apicBase: 272, interruptBitmap: 280 } as const;

// ---- system (/dev/kvm) ----
export class Kvm {
  readonly fd: number;
  constructor(path = '/dev/kvm') {
    this.fd = open(path, O_RDWR | O_CLOEXEC);
    try {
      const v = ioctl('KVM_GET_API_VERSION', this.fd, KVM.GET_API_VERSION);
      if (v !== 12) throw new Error(`KVM API version ${v}, expected 12`);
    } catch (e) { close(this.fd); throw e; }
  }
  checkExtension(cap: number): number { return ioctl('KVM_CHECK_EXTENSION', this.fd, KVM.CHECK_EXTENSION, cap); }
  vcpuMmapSize(): number { return ioctl('KVM_GET_VCPU_MMAP_SIZE', this.fd, KVM.GET_VCPU_MMAP_SIZE); }
  /** struct kvm_cpuid2 with the host's supported entries (to hand to KVM_SET_CPUID2). */
  supportedCpuid(): Buffer {
    const max = 128;
    const b = Buffer.alloc(8 + max * SIZE.cpuidEntry);
    b.writeUInt32LE(max, 0);
    ioctlBuf('KVM_GET_SUPPORTED_CPUID', this.fd, KVM.GET_SUPPORTED_CPUID, b);
    return b.subarray(0, 8 + b.readUInt32LE(0) * SIZE.cpuidEntry);
  }
  createVm(): VmFd { return new VmFd(ioctl('KVM_CREATE_VM', this.fd, KVM.CREATE_VM, 0)); }
  close(): void { close(this.fd); }
}

// ---- VM ----
export class VmFd {
  constructor(readonly fd: number) {}
  setTssAddr(addr: number): void { ioctl('KVM_SET_TSS_ADDR', this.fd, KVM.SET_TSS_ADDR, addr); }
  createIrqchip(): void { ioctl('KVM_CREATE_IRQCHIP', this.fd, KVM.CREATE_IRQCHIP); }
  createPit2(): void { ioctlBuf('KVM_CREATE_PIT2', this.fd, KVM.CREATE_PIT2, Buffer.alloc(SIZE.pitConfig)); }
  setUserMemoryRegion(slot: number, guestPhys: number, size: number, hostAddr: number, flags = 0): void {
    const b = Buffer.alloc(SIZE.memoryRegion);
    b.writeUInt32LE(slot, 0); b.writeUInt32LE(flags, 4);
    b.writeBigUInt64LE(BigInt(guestPhys), 8); b.writeBigUInt64LE(BigInt(size), 16); b.writeBigUInt64LE(BigInt(hostAddr), 24);
    ioctlBuf('KVM_SET_USER_MEMORY_REGION', this.fd, KVM.SET_USER_MEMORY_REGION, b);
  }
  createVcpu(id: number): number { return ioctl('KVM_CREATE_VCPU', this.fd, KVM.CREATE_VCPU, id); }
  irqLine(irq: number, level: 0 | 1): void {
    const b = Buffer.alloc(8); b.writeUInt32LE(irq, 0); b.writeUInt32LE(level, 4);
    ioctlBuf('KVM_IRQ_LINE', this.fd, KVM.IRQ_LINE, b);
  }
  /** Bind an eventfd to a GSI (KVM_IRQFD). */
  irqfd(efd: number, gsi: number, deassign = false): void {
    const b = Buffer.alloc(SIZE.irqfd); b.writeUInt32LE(efd, 0); b.writeUInt32LE(gsi, 4); b.writeUInt32LE(deassign ? 1 : 0, 8);
    ioctlBuf('KVM_IRQFD', this.fd, KVM.IRQFD, b);
  }
  /** Bind an eventfd to guest writes at an MMIO (or PIO) address (KVM_IOEVENTFD). */
  ioeventfd(efd: number, addr: number, len: number, opts: { datamatch?: number; pio?: boolean; deassign?: boolean } = {}): void {
    const b = Buffer.alloc(SIZE.ioeventfd);
    let flags = 0;
    if (opts.datamatch !== undefined) { flags |= IOEVENTFD_FLAG.DATAMATCH; b.writeBigUInt64LE(BigInt(opts.datamatch), 0); }
    if (opts.pio) flags |= IOEVENTFD_FLAG.PIO;
    if (opts.deassign) flags |= IOEVENTFD_FLAG.DEASSIGN;
    b.writeBigUInt64LE(BigInt(addr), 8); b.writeUInt32LE(len, 16); b.writeInt32LE(efd, 20); b.writeUInt32LE(flags, 24);
    ioctlBuf('KVM_IOEVENTFD', this.fd, KVM.IOEVENTFD, b);
  }
  getIrqchip(chip: number): Buffer {
    const b = Buffer.alloc(SIZE.irqchip); b.writeUInt32LE(chip, 0);
    ioctlBuf('KVM_GET_IRQCHIP', this.fd, KVM.GET_IRQCHIP, b); return b;
  }
  setIrqchip(b: Buffer): void { ioctlBuf('KVM_SET_IRQCHIP', this.fd, KVM.SET_IRQCHIP, b); }
  getPit2(): Buffer { const b = Buffer.alloc(SIZE.pitState2); ioctlBuf('KVM_GET_PIT2', this.fd, KVM.GET_PIT2, b); return b; }
  setPit2(b: Buffer): void { ioctlBuf('KVM_SET_PIT2', this.fd, KVM.SET_PIT2, b); }
  close(): void { close(this.fd); }
}

// ---- vCPU ----
export class VcpuFd {
  /** struct kvm_run, shared with the thread that runs this vCPU. */
  readonly run: Buffer;
  readonly runAddr: number;
  constructor(readonly fd: number, readonly id: number, runSize: number) {
    this.runAddr = mmap(runSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    this.run = bufferAt(this.runAddr, runSize);
  }
  private get(name: string, req: number, size: number): Buffer { const b = Buffer.alloc(size); ioctlBuf(name, this.fd, req, b); return b; }
  getRegs(): Buffer { return this.get('KVM_GET_REGS', KVM.GET_REGS, SIZE.regs); }
  setRegs(b: Buffer): void { ioctlBuf('KVM_SET_REGS', this.fd, KVM.SET_REGS, b); }
  getSregs(): Buffer { return this.get('KVM_GET_SREGS', KVM.GET_SREGS, SIZE.sregs); }
  setSregs(b: Buffer): void { ioctlBuf('KVM_SET_SREGS', this.fd, KVM.SET_SREGS, b); }
  getFpu(): Buffer { return this.get('KVM_GET_FPU', KVM.GET_FPU, SIZE.fpu); }
  setFpu(b: Buffer): void { ioctlBuf('KVM_SET_FPU', this.fd, KVM.SET_FPU, b); }
  getXsave(): Buffer { return this.get('KVM_GET_XSAVE', KVM.GET_XSAVE, SIZE.xsave); }
  setXsave(b: Buffer): void { ioctlBuf('KVM_SET_XSAVE', this.fd, KVM.SET_XSAVE, b); }
  getLapic(): Buffer { return this.get('KVM_GET_LAPIC', KVM.GET_LAPIC, SIZE.lapic); }
  setLapic(b: Buffer): void { ioctlBuf('KVM_SET_LAPIC', this.fd, KVM.SET_LAPIC, b); }
  getMpState(): number { return this.get('KVM_GET_MP_STATE', KVM.GET_MP_STATE, 4).readUInt32LE(); }
  setMpState(s: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(s); ioctlBuf('KVM_SET_MP_STATE', this.fd, KVM.SET_MP_STATE, b); }
  getVcpuEvents(): Buffer { return this.get('KVM_GET_VCPU_EVENTS', KVM.GET_VCPU_EVENTS, SIZE.vcpuEvents); }
  setVcpuEvents(b: Buffer): void { ioctlBuf('KVM_SET_VCPU_EVENTS', this.fd, KVM.SET_VCPU_EVENTS, b); }
  tscKhz(): number { return ioctl('KVM_GET_TSC_KHZ', this.fd, KVM.GET_TSC_KHZ); }
  setCpuid2(cpuid: Buffer): void { ioctlBuf('KVM_SET_CPUID2', this.fd, KVM.SET_CPUID2, cpuid); }
  /** Reads the given MSRs; returns only those KVM could read (KVM_GET_MSRS stops at the first failure). */
  getMsrs(indices: number[]): Map<number, bigint> {
    const b = Buffer.alloc(8 + indices.length * SIZE.msrEntry);
    b.writeUInt32LE(indices.length, 0);
    indices.forEach((idx, i) => b.writeUInt32LE(idx, 8 + i * SIZE.msrEntry));
    const n = ioctlBuf('KVM_GET_MSRS', this.fd, KVM.GET_MSRS, b);
    const out = new Map<number, bigint>();
    for (let i = 0; i < n; i++) out.set(b.readUInt32LE(8 + i * SIZE.msrEntry), b.readBigUInt64LE(16 + i * SIZE.msrEntry));
    return out;
  }
  setMsrs(msrs: Map<number, bigint>): number {
    const b = Buffer.alloc(8 + msrs.size * SIZE.msrEntry);
    b.writeUInt32LE(msrs.size, 0);
    let i = 0;
    for (const [idx, v] of msrs) { b.writeUInt32LE(idx, 8 + i * SIZE.msrEntry); b.writeBigUInt64LE(v, 16 + i * SIZE.msrEntry); i++; }
    return ioctlBuf('KVM_SET_MSRS', this.fd, KVM.SET_MSRS, b);
  }
}
