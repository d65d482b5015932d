// One vCPU of the emu accelerator: the run loop over the shim's exits (the platform's ports and
// MMIO are answered here and never reach the VMM, as with KVM's in-kernel irqchip), interrupt and
// exception delivery through the guest's IDT (64-bit gates: IST and RSP0 stacks, error codes,
// IF cleared by interrupt gates; a fault while delivering becomes #DF, a fault delivering #DF a
// triple fault), and the neutral CPU state.
import {
  GPR_NAMES, type CpuState, type Segment, type SegmentName, type Vcpu, type VcpuExit,
} from '../index.js';
import { translate, type GuestMemory } from '../../memory.js';
import { EXIT, REGS, RG, SH, STATE_MSRS, tscKhz, type ShimVcpu } from './shim.js';
import { Lapic, LAPIC_BASE, LAPIC_SIZE } from './lapic.js';
import { IOAPIC_BASE, IOAPIC_SIZE } from './ioapic.js';

/** The VM-wide platform a vCPU talks to (implemented by EmuVm). */
export interface Platform {
  readonly memory: GuestMemory | undefined;
  port(port: number): { in(size: number): number; out(size: number, value: number): void } | null;
  ioapicRead(off: number): number;
  ioapicWrite(off: number, value: number): void;
  /** GSI edges from irqfds. */
  pulse(gsi: number): void;
  /** The platform timers passed their deadline. */
  timersFired(now: bigint): void;
  /** The earliest platform timer deadline (PIT), 0n if none. */
  timerDeadline(): bigint;
  /** The 8259's output, and taking its vector (INTA). */
  picOutput(): boolean;
  picAcknowledge(): number;
}

const now = (): bigint => process.hrtime.bigint();
const RFLAGS = { TF: 1n << 8n, IF: 1n << 9n, NT: 1n << 14n, RF: 1n << 16n, VM: 1n << 17n } as const;
const ERROR_CODE_VECTORS = new Set([8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
const EXCEPTION_NAMES = ['#DE', '#DB', 'NMI', '#BP', '#OF', '#BR', '#UD', '#NM', '#DF', 'coprocessor overrun', '#TS', '#NP', '#SS', '#GP', '#PF', 'vector 15', '#MF', '#AC', '#MC', '#XM', '#VE', '#CP'];
const vectorName = (v: number): string => EXCEPTION_NAMES[v] ?? `vector ${v}`;
const hex = (x: bigint | number): string => `0x${x.toString(16)}`;

/** A fault raised while delivering: the exception to deliver instead (#PF: with CR2). */
class DeliveryFault { constructor(readonly vector: number, readonly errorCode: number, readonly cr2?: bigint) {} }

/** An x86 segment descriptor (8 bytes) as the neutral Segment. */
function decodeDescriptor(d: Buffer, selector: number): Segment {
  const b5 = d[5], b6 = d[6];
  let limit = d.readUInt16LE(0) | ((b6 & 0xf) << 16);
  if (b6 & 0x80) limit = ((limit << 12) | 0xfff) >>> 0;
  const base = BigInt(d.readUInt16LE(2) | (d[4] << 16) | (d[7] << 24)) & 0xffffffffn;
  return {
    base, limit, selector, type: b5 & 0xf, present: b5 >> 7, dpl: (b5 >> 5) & 3, db: (b6 >> 6) & 1, s: (b5 >> 4) & 1,
    l: (b6 >> 5) & 1, g: b6 >> 7, avl: (b6 >> 4) & 1, unusable: 0,
  };
}
/** QEMU's segment flags word (descriptor bits 40-55 at 8-23), as the shim passes TR and LDTR. */
const segmentFlags = (s: Segment): number =>
  (s.type << 8) | (s.s << 12) | (s.dpl << 13) | (s.present << 15) | (s.avl << 20) | (s.l << 21) | (s.db << 22) | (s.g << 23);
const fromFlags = (f: number, base: bigint, limit: number, selector: number): Segment => ({
  base, limit, selector, type: (f >> 8) & 0xf, s: (f >> 12) & 1, dpl: (f >> 13) & 3, present: (f >> 15) & 1,
  avl: (f >> 20) & 1, l: (f >> 21) & 1, db: (f >> 22) & 1, g: (f >> 23) & 1, unusable: (f >> 15) & 1 ? 0 : 1,
});

export class EmuVcpu implements Vcpu {
  readonly lapic: Lapic;
  private pendingInjection: number | null = null;
  private closed = false;

  constructor(readonly id: number, readonly shim: ShimVcpu, private readonly platform: Platform, lapicEoi: (vector: number) => void) {
    this.lapic = new Lapic(id, { eoi: lapicEoi });
  }

  close(): void { this.closed = true; }

  private get sh(): Buffer { return this.shim.shared; }

  // ---- interrupts ----

  /** Whether an interrupt waits for the CPU (IF permitting). */
  interruptWanted(): boolean {
    if (this.lapic.pending() >= 0) return true;
    return this.platform.picOutput() && this.lapic.acceptsPicInterrupts(true);
  }

  /** Something changed the platform's interrupts while the vCPU may be running: let it look. */
  notify(): void {
    if (this.closed) return;
    const want = this.interruptWanted() ? 1 : 0;
    this.sh.writeUInt32LE(want, SH.irqPending);
    if (want) this.shim.kick();
  }

  private prepare(): void {
    this.sh.writeUInt32LE(this.interruptWanted() ? 1 : 0, SH.irqPending);
    const a = this.lapic.deadline, b = this.platform.timerDeadline();
    this.sh.writeBigUInt64LE(a && b ? (a < b ? a : b) : a || b, SH.deadlineNs);
  }

  private events(): void {
    const edges = this.sh.readUInt32LE(SH.gsiEdges);
    if (edges) {
      this.sh.writeUInt32LE(0, SH.gsiEdges);
      for (let g = 0; g < 32; g++) if (edges & (1 << g)) this.platform.pulse(g);
    }
    if (this.sh.readUInt32LE(SH.timerFired)) {
      this.sh.writeUInt32LE(0, SH.timerFired);
      const t = now();
      this.lapic.tick(t);
      this.platform.timersFired(t);
    }
  }

  /** The vCPU is at an instruction boundary with IF set: take the interrupt. */
  private injectInterrupt(): VcpuExit | null {
    let vector = -1;
    if (this.platform.picOutput() && this.lapic.acceptsPicInterrupts(true)) vector = this.platform.picAcknowledge();
    else vector = this.lapic.acknowledge();
    if (vector < 0) return null;
    this.sh.writeUInt32LE(0, SH.halted);
    return this.raise(vector, { external: true });
  }

  // ---- guest memory through the page tables ----

  private physical(regs: Buffer, va: bigint, write: boolean): number {
    const mem = this.platform.memory!;
    const paging = (regs.readBigUInt64LE(RG.cr0) & 0x80000000n) !== 0n;
    const read64 = (gpa: number): bigint => mem.view(gpa, 8).readBigUInt64LE();
    let gpa: number | null;
    try { gpa = paging ? translate(read64, regs.readBigUInt64LE(RG.cr3), va) : Number(va); } catch { gpa = null; }
    if (gpa === null) throw new DeliveryFault(14, write ? 2 : 0, va);
    return gpa;
  }
  private readVirt(regs: Buffer, va: bigint, len: number): Buffer {
    try { return Buffer.from(this.platform.memory!.view(this.physical(regs, va, false), len)); } catch (e) {
      if (e instanceof DeliveryFault) throw e;
      throw new DeliveryFault(14, 0, va); // not RAM
    }
  }
  private writeVirt64(regs: Buffer, va: bigint, value: bigint): void {
    try { this.platform.memory!.view(this.physical(regs, va, true), 8).writeBigUInt64LE(BigInt.asUintN(64, value)); } catch (e) {
      if (e instanceof DeliveryFault) throw e;
      throw new DeliveryFault(14, 2, va);
    }
  }

  /**
   * Delivers `vector` through the IDT (64-bit mode). `soft`: INT n/INT3/INTO (checks the gate's
   * DPL); `external`: an interrupt (EXT set in error codes). Returns a fatal exit on a triple fault.
   */
  raise(vector: number, how: { errorCode?: number; soft?: boolean; external?: boolean }): VcpuExit | null {
    const first = vector;
    let errorCode = how.errorCode, soft = how.soft ?? false, ext = how.external ? 1 : 0;
    for (let attempt = 0; ; attempt++) {
      try {
        this.deliver(vector, errorCode, soft, ext);
        return null;
      } catch (e) {
        if (!(e instanceof DeliveryFault)) throw e;
        if (vector === 8 || attempt >= 2) {
          const regs = this.shim.getRegs();
          const rip = regs.readBigUInt64LE(RG.gpr + 16 * 8);
          return { kind: 'fatal', message: `guest triple fault (${vectorName(first)} could not be delivered: IDT base ${hex(regs.readBigUInt64LE(RG.idt))} limit ${hex(regs.readUInt32LE(RG.idt + 8))}) at ${this.describeRip(rip)}` };
        }
        const contributory = (v: number) => v === 0 || (v >= 10 && v <= 13);
        if ((contributory(vector) && contributory(e.vector)) || (vector === 14 && (contributory(e.vector) || e.vector === 14))) {
          vector = 8; errorCode = 0;
        } else {
          vector = e.vector; errorCode = e.errorCode;
        }
        soft = false; ext = 0;
        if (vector === 14 && e.cr2 !== undefined) {
          const regs = Buffer.from(this.shim.getRegs());
          regs.writeBigUInt64LE(e.cr2, RG.cr2);
          this.shim.setRegs(regs, REGS.SYS);
        }
      }
    }
  }

  private deliver(vector: number, errorCode: number | undefined, soft: boolean, ext: number): void {
    const regs = Buffer.from(this.shim.getRegs());
    const gp = (v: number) => new DeliveryFault(13, v * 8 + 2 + ext);
    const idtBase = regs.readBigUInt64LE(RG.idt), idtLimit = regs.readUInt32LE(RG.idt + 8);
    if (vector * 16 + 15 > idtLimit) throw gp(vector);
    const gate = this.readVirt(regs, idtBase + BigInt(vector * 16), 16);
    const type = gate[5] & 0xf, dpl = (gate[5] >> 5) & 3, present = gate[5] >> 7;
    const oldCs = regs.readUInt16LE(RG.sel), cpl = oldCs & 3;
    if (type !== 0xe && type !== 0xf) throw gp(vector);
    if (soft && dpl < cpl) throw gp(vector);
    if (!present) throw new DeliveryFault(11, vector * 8 + 2 + ext);
    const selector = gate.readUInt16LE(2), ist = gate[4] & 7;
    const target = BigInt.asUintN(64, BigInt(gate.readUInt32LE(8)) << 32n | BigInt(gate.readUInt16LE(6)) << 16n | BigInt(gate.readUInt16LE(0)));

    // The target code segment: present, 64-bit.
    const gdtBase = regs.readBigUInt64LE(RG.gdt), gdtLimit = regs.readUInt32LE(RG.gdt + 8);
    if ((selector & ~3) === 0 || (selector | 7) > gdtLimit) throw new DeliveryFault(13, (selector & ~3) + ext);
    const code = decodeDescriptor(this.readVirt(regs, gdtBase + BigInt(selector & ~7), 8), selector);
    if (!code.s || !(code.type & 8) || !code.l || code.dpl > cpl) throw new DeliveryFault(13, (selector & ~3) + ext);
    if (!code.present) throw new DeliveryFault(11, (selector & ~3) + ext);
    const newCpl = code.type & 4 ? cpl : code.dpl; // conforming code keeps the CPL

    const gpr = (i: number) => regs.readBigUInt64LE(RG.gpr + i * 8);
    const oldRsp = gpr(6), oldRip = gpr(16), oldRflags = gpr(17), oldSs = regs.readUInt16LE(RG.sel + 10);
    let rsp = oldRsp;
    if (ist || newCpl < cpl) {
      const tss = regs.readBigUInt64LE(RG.tr);
      rsp = this.readVirt(regs, tss + (ist ? 0x24n + BigInt((ist - 1) * 8) : 4n + BigInt(newCpl * 8)), 8).readBigUInt64LE();
    }
    rsp &= ~0xfn;
    const push = (x: bigint) => { rsp -= 8n; this.writeVirt64(regs, rsp, x); };
    push(BigInt(oldSs));
    push(oldRsp);
    push(oldRflags);
    push(BigInt(oldCs));
    push(oldRip);
    if (!soft && ERROR_CODE_VECTORS.has(vector)) push(BigInt(errorCode ?? 0));

    let rflags = oldRflags & ~(RFLAGS.TF | RFLAGS.NT | RFLAGS.RF | RFLAGS.VM);
    if (type === 0xe) rflags &= ~RFLAGS.IF;
    regs.writeBigUInt64LE(rsp, RG.gpr + 6 * 8);
    regs.writeBigUInt64LE(target, RG.gpr + 16 * 8);
    regs.writeBigUInt64LE(rflags, RG.gpr + 17 * 8);
    const newCs = (selector & ~3) | newCpl;
    if (newCs !== oldCs || newCpl !== cpl) {
      regs.writeUInt16LE(newCs, RG.sel);
      if (newCpl !== cpl) regs.writeUInt16LE(newCpl, RG.sel + 10); // SS = NULL with RPL = new CPL
      this.shim.setRegs(regs, REGS.GPR | REGS.SYS);
    } else {
      this.shim.setRegs(regs, REGS.GPR);
    }
  }

  // ---- the run loop ----

  async run(): Promise<VcpuExit> {
    if (this.pendingInjection !== null) {
      const v = this.pendingInjection;
      this.pendingInjection = null;
      const r = this.raise(v, { external: true });
      if (r) return r;
    }
    for (;;) {
      if (this.closed) return { kind: 'interrupted' };
      this.prepare();
      const kind = await this.shim.run();
      if (this.closed) return { kind: 'interrupted' };
      const sh = this.sh;
      switch (kind) {
        case EXIT.IO: {
          const port = Number(sh.readBigUInt64LE(SH.addr)), size = sh.readUInt32LE(SH.accessSize) as 1 | 2 | 4;
          const write = sh.readUInt32LE(SH.write) !== 0, data = sh.subarray(SH.data, SH.data + size);
          const dev = this.platform.port(port);
          if (!dev) return { kind: 'io', port, size, write, count: 1, data };
          if (write) dev.out(size, data.readUIntLE(0, size)); else data.writeUIntLE(dev.in(size) & (2 ** (size * 8) - 1), 0, size);
          break;
        }
        case EXIT.MMIO: {
          const addr = Number(sh.readBigUInt64LE(SH.addr)), size = sh.readUInt32LE(SH.accessSize);
          const write = sh.readUInt32LE(SH.write) !== 0, data = sh.subarray(SH.data, SH.data + size);
          if (addr >= LAPIC_BASE && addr < LAPIC_BASE + LAPIC_SIZE) this.lapicAccess(addr - LAPIC_BASE, write, data);
          else if (addr >= IOAPIC_BASE && addr < IOAPIC_BASE + IOAPIC_SIZE) this.ioapicAccess(addr - IOAPIC_BASE, write, data);
          else return { kind: 'mmio', addr, write, data };
          break;
        }
        case EXIT.EVENT: this.events(); break;
        case EXIT.WINDOW: { const r = this.injectInterrupt(); if (r) return r; break; }
        case EXIT.EXCEPTION: {
          const vector = sh.readUInt32LE(SH.vector), soft = (sh.readUInt32LE(SH.flags) & 1) !== 0;
          const r = this.raise(vector, { errorCode: sh.readUInt32LE(SH.errorCode), soft });
          if (r) return r;
          break;
        }
        case EXIT.INTERRUPTED: return { kind: 'interrupted' };
        case EXIT.FATAL: {
          const msg = sh.toString('latin1', SH.message, SH.message + 128).replace(/\0.*$/s, '');
          return { kind: 'fatal', message: `${msg} at ${this.describeRip(sh.readBigUInt64LE(SH.rip), sh.subarray(SH.insn, SH.insn + 16))}` };
        }
        default: return { kind: 'fatal', message: `emu: unexpected exit ${kind}` };
      }
    }
  }

  private lapicAccess(off: number, write: boolean, data: Buffer): void {
    const t = now();
    if (write) { if (data.length === 4 && (off & 0xf) === 0) this.lapic.write(off, data.readUInt32LE(), t); }
    else {
      const v = this.lapic.read(off & ~3, t), b = Buffer.alloc(4);
      b.writeUInt32LE(v >>> 0);
      data.fill(0);
      b.copy(data, 0, off & 3, Math.min(4, (off & 3) + data.length));
    }
  }

  private ioapicAccess(off: number, write: boolean, data: Buffer): void {
    if (write) this.platform.ioapicWrite(off & ~3, data.readUIntLE(0, Math.min(4, data.length)));
    else { data.fill(0); data.writeUInt32LE(this.platform.ioapicRead(off & ~3) >>> 0, 0); }
  }

  private describeRip(rip: bigint, bytes?: Buffer): string {
    const b = bytes ?? this.shim.readVirt(rip, 15);
    return `guest RIP ${hex(rip)}, instruction bytes ${[...b.subarray(0, 15)].map((x) => x.toString(16).padStart(2, '0')).join(' ')}`;
  }

  requestExit(): void {
    if (this.closed) return;
    this.sh.writeUInt32LE(1, SH.immediateExit);
    this.shim.kick();
  }
  clearExitRequest(): void { if (!this.closed) this.sh.writeUInt32LE(0, SH.immediateExit); }

  tscKhz(): number { return tscKhz(); }

  // ---- the neutral state ----

  getState(): CpuState {
    const r = this.shim.getRegs();
    const mem = this.platform.memory;
    const u64 = (o: number) => r.readBigUInt64LE(o);
    const regs = Object.fromEntries(GPR_NAMES.map((n, i) => [n, u64(RG.gpr + i * 8)])) as CpuState['regs'];
    const gdtBase = u64(RG.gdt), gdtLimit = r.readUInt32LE(RG.gdt + 8);
    const segment = (i: number): Segment => {
      const sel = r.readUInt16LE(RG.sel + i * 2);
      if ((sel & ~3) === 0 || (sel | 7) > gdtLimit || !mem) {
        return { base: 0n, limit: 0, selector: sel, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 };
      }
      try { return decodeDescriptor(this.readVirt(r, gdtBase + BigInt(sel & ~7), 8), sel); } catch {
        return { base: 0n, limit: 0, selector: sel, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 };
      }
    };
    const sys = (o: number): Segment => fromFlags(r.readUInt32LE(o + 12), u64(o), r.readUInt32LE(o + 8), r.readUInt16LE(o + 16));
    const segs = { cs: segment(0), ds: segment(1), es: segment(2), fs: segment(3), gs: segment(4), ss: segment(5), tr: sys(RG.tr), ldt: sys(RG.ldt) };
    segs.fs.base = u64(RG.fsBase);
    segs.gs.base = u64(RG.gsBase);
    const st = Buffer.alloc(128);
    for (let i = 0; i < 8; i++) r.copy(st, i * 16, RG.st + i * 16, RG.st + i * 16 + 10);
    return {
      regs, segments: segs,
      gdt: { base: gdtBase, limit: gdtLimit }, idt: { base: u64(RG.idt), limit: r.readUInt32LE(RG.idt + 8) },
      cr0: u64(RG.cr0), cr2: u64(RG.cr2), cr3: u64(RG.cr3), cr4: u64(RG.cr4), cr8: BigInt(this.lapic.read(0x80, 0n) >> 4), efer: u64(RG.efer),
      apicBase: u64(RG.apicBase),
      msrs: [
        ...STATE_MSRS.map((index, i) => ({ index, value: u64(RG.msr + i * 8) })),
        { index: 0xc0000102, value: u64(RG.kernelGsBase) },
        { index: 0x10, value: u64(RG.tsc) },
      ],
      fpu: {
        fcw: r.readUInt16LE(RG.fcw), fsw: r.readUInt16LE(RG.fsw), ftw: r.readUInt16LE(RG.ftw), fop: r.readUInt16LE(RG.fop),
        fip: u64(RG.fip), fdp: u64(RG.fdp), mxcsr: r.readUInt32LE(RG.mxcsr), st, xmm: Buffer.from(r.subarray(RG.xmm, RG.xmm + 256)),
      },
      lapic: this.lapic.save(now()),
      mpState: this.sh.readUInt32LE(SH.halted) ? 'halted' : 'runnable',
      pendingInterrupt: this.pendingInjection,
      accel: { kind: 'emu', data: {} },
    };
  }

  setState(s: CpuState): void {
    const r = Buffer.alloc(RG.size);
    GPR_NAMES.forEach((n, i) => r.writeBigUInt64LE(BigInt.asUintN(64, s.regs[n]), RG.gpr + i * 8));
    for (const [o, v] of [[RG.cr0, s.cr0], [RG.cr2, s.cr2], [RG.cr3, s.cr3], [RG.cr4, s.cr4], [RG.cr8, s.cr8], [RG.efer, s.efer],
      [RG.fsBase, s.segments.fs.base], [RG.gsBase, s.segments.gs.base], [RG.apicBase, s.apicBase]] as const) r.writeBigUInt64LE(BigInt.asUintN(64, v), o);
    (['cs', 'ds', 'es', 'fs', 'gs', 'ss'] as SegmentName[]).forEach((n, i) => r.writeUInt16LE(s.segments[n].selector, RG.sel + i * 2));
    r.writeBigUInt64LE(s.gdt.base, RG.gdt); r.writeUInt32LE(s.gdt.limit, RG.gdt + 8);
    r.writeBigUInt64LE(s.idt.base, RG.idt); r.writeUInt32LE(s.idt.limit, RG.idt + 8);
    for (const [o, seg] of [[RG.tr, s.segments.tr], [RG.ldt, s.segments.ldt]] as const) {
      r.writeBigUInt64LE(seg.base, o); r.writeUInt32LE(seg.limit >>> 0, o + 8);
      r.writeUInt32LE(seg.unusable ? 0 : segmentFlags(seg), o + 12); r.writeUInt16LE(seg.selector, o + 16);
    }
    r.writeUInt16LE(s.fpu.fcw, RG.fcw); r.writeUInt16LE(s.fpu.fsw, RG.fsw); r.writeUInt16LE(s.fpu.ftw & 0xff, RG.ftw); r.writeUInt16LE(s.fpu.fop, RG.fop);
    r.writeUInt32LE(s.fpu.mxcsr, RG.mxcsr); r.writeBigUInt64LE(s.fpu.fip, RG.fip); r.writeBigUInt64LE(s.fpu.fdp, RG.fdp);
    for (let i = 0; i < 8; i++) s.fpu.st.copy(r, RG.st + i * 16, i * 16, i * 16 + 16);
    s.fpu.xmm.copy(r, RG.xmm, 0, 256);
    const msr = new Map(s.msrs.map((m) => [m.index, m.value]));
    STATE_MSRS.forEach((index, i) => r.writeBigUInt64LE(BigInt.asUintN(64, msr.get(index) ?? 0n), RG.msr + i * 8));
    r.writeBigUInt64LE(BigInt.asUintN(64, msr.get(0xc0000102) ?? 0n), RG.kernelGsBase);
    const tsc = msr.get(0x10);
    if (tsc !== undefined) r.writeBigUInt64LE(BigInt.asUintN(64, tsc), RG.tsc);
    this.shim.setRegs(r, REGS.SYS | REGS.FPU | REGS.MSR | REGS.GPR | (tsc !== undefined ? REGS.TSC : 0));
    this.lapic.restore(s.lapic, now());
    this.sh.writeUInt32LE(s.mpState === 'halted' ? 1 : 0, SH.halted);
    this.pendingInjection = s.pendingInterrupt;
  }
}
