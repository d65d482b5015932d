// The seam between the VMM and the CPU accelerator (Cloud Hypervisor's `hypervisor` crate: a Vm
// with vCPUs, memory, interrupt lines, irqfds and ioeventfds; a Vcpu whose run returns an exit).
// Two implementations: `kvm` (src/accel/kvm.ts) and `emu` (src/accel/emu/, QEMU's TCG through
// Unicorn). Nothing above src/ sees a KVM struct or a Unicorn handle: only the types in this file.
//
// The state types here are the neutral schema the CPR state carries, so a guest saved by one
// accelerator can be restored by the other. Anything only one accelerator understands travels in
// an `AccelPrivate` tagged with its kind, and is used only when restoring on that same kind.
import type { GuestMemory } from '../memory.js';

export type AccelKind = 'kvm' | 'emu';

/** Accelerator-specific data (KVM: XSAVE area, vcpu events, CPUID table), used only by the same kind. */
export interface AccelPrivate { kind: AccelKind; data: Record<string, Buffer | number | bigint | string | null> }

// ---- vCPU state (neutral) ----

export const GPR_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
export type GprName = (typeof GPR_NAMES)[number];
export type Gprs = Record<GprName, bigint>;

/** A segment register with its hidden part (the architecture's descriptor cache; KVM's kvm_segment). */
export interface Segment {
  base: bigint; limit: number; selector: number;
  type: number; present: number; dpl: number; db: number; s: number; l: number; g: number; avl: number; unusable: number;
}
export const SEGMENT_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
export type SegmentName = (typeof SEGMENT_NAMES)[number];
export interface DescriptorTable { base: bigint; limit: number }

/** x87/SSE state (the FXSAVE content; toy guests are built without it, but a guest may use it). */
export interface FpuState {
  fcw: number; fsw: number; ftw: number; fop: number; fip: bigint; fdp: bigint; mxcsr: number;
  /** ST0..ST7, 16 bytes each (80-bit value, padded). */
  st: Buffer;
  /** XMM0..XMM15, 16 bytes each. */
  xmm: Buffer;
}

export type MpState = 'runnable' | 'uninitialized' | 'init-received' | 'halted' | 'sipi-received';

export interface CpuState {
  regs: Gprs;
  segments: Record<SegmentName, Segment>;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  /** Other MSRs that carry guest state, TSC (0x10) last: restored after everything else. */
  msrs: { index: number; value: bigint }[];
  fpu: FpuState;
  /** The local APIC's xAPIC register page (1024 bytes at architectural offsets; 0x390 is the timer's current count). */
  lapic: Buffer;
  mpState: MpState;
  /** An interrupt delivered by the platform but not yet taken by the vCPU, if any. */
  pendingInterrupt: number | null;
  accel?: AccelPrivate;
}

// ---- platform (interrupt controllers and timer) state (neutral) ----

/** One 8259A (the fields of KVM's kvm_pic_state, which are the chip's own registers). */
export interface PicState {
  lastIrr: number; irr: number; imr: number; isr: number; priorityAdd: number; irqBase: number;
  readRegSelect: number; poll: number; specialMask: number; initState: number; autoEoi: number;
  rotateOnAutoEoi: number; specialFullyNestedMode: number; init4: number; elcr: number; elcrMask: number;
}

/** The IOAPIC: its id, register select, pin levels and 24 redirection entries. */
export interface IoapicState { base: number; id: number; ioregsel: number; irr: number; redirtbl: bigint[] }

/** One 8254 channel. `countLoadTime` is CLOCK_MONOTONIC in ns (comparable across exec). */
export interface PitChannelState {
  count: number; latchedCount: number; countLatched: number; statusLatched: number; status: number;
  readState: number; writeState: number; writeLatch: number; rwMode: number; mode: number; bcd: number;
  gate: number; countLoadTime: bigint;
}
export interface PitState { channels: PitChannelState[]; flags: number }

export interface PlatformState { pic: [PicState, PicState]; ioapic: IoapicState; pit: PitState; accel?: AccelPrivate }

// ---- exits ----

/**
 * Why Vcpu.run() returned. `data` Buffers alias the accelerator's shared exit area: for a read
 * (port IN, MMIO read) the VMM fills `data` before the next run(), as with KVM_RUN.
 */
export type VcpuExit =
  | { kind: 'io'; port: number; size: 1 | 2 | 4; write: boolean; count: number; data: Buffer }
  | { kind: 'mmio'; addr: number; write: boolean; data: Buffer }
  /** requestExit() took effect, or a signal interrupted the run: re-enter unless pausing. */
  | { kind: 'interrupted' }
  /** Halted with nothing that can wake it (an accelerator without an in-kernel irqchip); re-enter. */
  | { kind: 'hlt' }
  /** The guest asked to power off or reset (system event). */
  | { kind: 'system-event'; type: 'shutdown' | 'reset' | 'crash' }
  /** The guest cannot go on: triple fault, an instruction the accelerator cannot run, an entry failure. The message names RIP and the instruction bytes. */
  | { kind: 'fatal'; message: string };

// ---- the interfaces ----

export interface Vcpu {
  readonly id: number;
  /** Runs the vCPU (off the main thread) until the next exit. */
  run(): Promise<VcpuExit>;
  /**
   * Makes a run() in progress return { kind: 'interrupted' } soon, and the next run() return at
   * once, until clearExitRequest(). Safe to call from the main thread at any time.
   */
  requestExit(): void;
  clearExitRequest(): void;
  getState(): CpuState;
  setState(s: CpuState): void;
  /** The guest TSC frequency this vCPU runs at, in kHz (written into the boot info). */
  tscKhz(): number;
}

export interface IoeventfdOptions { datamatch?: number; pio?: boolean }

export interface Vm {
  readonly kind: AccelKind;
  readonly vcpus: readonly Vcpu[];
  /** Registers guest RAM with the VM. Once per VM (a cpr-transfer target does it before the state arrives). */
  setMemory(mem: GuestMemory): void;
  readonly memory: GuestMemory | undefined;
  /**
   * Fixes the CPU model the guest sees (KVM: the CPUID table). `saved`: what cpuModel() returned
   * in the image that saved the state, applied when it is of this kind (the guest keeps its CPU).
   */
  configureCpus(saved?: AccelPrivate): void;
  cpuModel(): AccelPrivate;
  /** Drives a GSI (IOAPIC pin; below 16 also the PIC). */
  irqLine(gsi: number, level: 0 | 1): void;
  /** Binds (or unbinds) an eventfd to a GSI: a write to it is an edge on the pin (KVM_IRQFD). */
  irqfd(efd: number, gsi: number, assign: boolean): void;
  /** Binds (or unbinds) an eventfd to guest writes of `len` bytes at `addr` (KVM_IOEVENTFD). */
  ioeventfd(efd: number, addr: number, len: number, opts: IoeventfdOptions, assign: boolean): void;
  getPlatformState(): PlatformState;
  setPlatformState(s: PlatformState): void;
  /** Releases the VM (the process may also just exit). */
  close(): void;
}

export interface Accelerator {
  readonly kind: AccelKind;
  /** One line for notices and x-query-stats, e.g. "KVM (API 12)" or "emu (Unicorn 2.0.1, QEMU TCG)". */
  readonly description: string;
  /** A VM with its interrupt controllers (PIC, IOAPIC, a LAPIC per vCPU), PIT and `smp` vCPUs. */
  createVm(smp: number): Vm;
}

/** An accelerator that cannot be used here: `reason` is one line for the user. */
export class AccelUnavailable extends Error {}
