// The local APIC of the emu accelerator (xAPIC, MMIO at 0xfee00000), modelled on KVM's
// arch/x86/kvm/lapic.c: its registers live in a 1024-byte page at their architectural offsets,
// which is also the page the neutral CPU state carries. Timer: one-shot and periodic, 1 ns per
// bus clock before the divider (as KVM's). No TSC-deadline mode (the CPU model does not offer it).

export const LAPIC_BASE = 0xfee00000;
export const LAPIC_SIZE = 0x1000;

const REG = {
  ID: 0x20, VERSION: 0x30, TPR: 0x80, APR: 0x90, PPR: 0xa0, EOI: 0xb0, RRD: 0xc0, LDR: 0xd0, DFR: 0xe0, SVR: 0xf0,
  ISR: 0x100, TMR: 0x180, IRR: 0x200, ESR: 0x280, CMCI: 0x2f0, ICR: 0x300, ICR2: 0x310, LVTT: 0x320, LVTTHMR: 0x330,
  LVTPC: 0x340, LVT0: 0x350, LVT1: 0x360, LVTERR: 0x370, TMICT: 0x380, TMCCT: 0x390, TDCR: 0x3e0,
} as const;
const VERSION = 0x14 | (5 << 16); // six LVT entries
const LVT_MASKED = 1 << 16;
const SVR_ENABLED = 1 << 8;
const NS_PER_TICK = 1n;

/** What the LAPIC asks of its VM: an EOI for a level-triggered vector goes to the IOAPIC. */
export interface LapicHost { eoi(vector: number): void }

export class Lapic {
  readonly page = Buffer.alloc(1024);
  /** CLOCK_MONOTONIC (ns) when the timer next fires, or 0n. */
  deadline = 0n;
  private period = 0n;

  constructor(readonly id: number, private readonly host: LapicHost) { this.reset(); }

  reset(): void {
    this.page.fill(0);
    this.set(REG.ID, this.id << 24);
    this.set(REG.VERSION, VERSION);
    this.set(REG.DFR, 0xffffffff);
    this.set(REG.SVR, 0xff);
    for (const r of [REG.LVTT, REG.LVTTHMR, REG.LVTPC, REG.LVT0, REG.LVT1, REG.LVTERR, REG.CMCI]) this.set(r, LVT_MASKED);
    this.deadline = this.period = 0n;
  }

  private get(off: number): number { return this.page.readUInt32LE(off); }
  private set(off: number, v: number): void { this.page.writeUInt32LE(v >>> 0, off); }
  private bit(base: number, vec: number): boolean { return (this.get(base + (vec >> 5) * 16) >>> (vec & 31) & 1) !== 0; }
  private setBit(base: number, vec: number, on: boolean): void {
    const off = base + (vec >> 5) * 16, m = 1 << (vec & 31);
    this.set(off, on ? this.get(off) | m : this.get(off) & ~m);
  }
  /** Highest vector set in the 256-bit register at `base`, or -1. */
  private highest(base: number): number {
    for (let i = 7; i >= 0; i--) {
      const w = this.get(base + i * 16);
      if (w) return i * 32 + 31 - Math.clz32(w);
    }
    return -1;
  }

  get softwareEnabled(): boolean { return (this.get(REG.SVR) & SVR_ENABLED) !== 0; }

  private ppr(): number {
    const tpr = this.get(REG.TPR) & 0xff, isr = this.highest(REG.ISR);
    return (tpr & 0xf0) >= (isr & 0xf0) || isr < 0 ? tpr : isr & 0xf0;
  }

  /** A fixed interrupt arrives (from the IOAPIC, an IPI to self or the timer). */
  accept(vector: number, level: boolean): void {
    if (!this.softwareEnabled || vector < 16) return;
    this.setBit(REG.IRR, vector, true);
    this.setBit(REG.TMR, vector, level);
  }

  /** The vector the CPU would take now (IF permitting), or -1. */
  pending(): number {
    if (!this.softwareEnabled) return -1;
    const v = this.highest(REG.IRR);
    return v >= 0 && (v & 0xf0) > (this.ppr() & 0xf0) ? v : -1;
  }

  /** The CPU takes the pending interrupt: IRR to ISR. */
  acknowledge(): number {
    const v = this.pending();
    if (v < 0) return -1;
    this.setBit(REG.IRR, v, false);
    this.setBit(REG.ISR, v, true);
    return v;
  }

  /** LINT0 is a virtual wire for the 8259 (ExtINT, unmasked), or the APIC is off. */
  acceptsPicInterrupts(apicEnabled: boolean): boolean {
    const lvt0 = this.get(REG.LVT0);
    return !apicEnabled || (!(lvt0 & LVT_MASKED) && ((lvt0 >> 8) & 7) === 7);
  }

  private timerDivide(): bigint {
    const d = this.get(REG.TDCR);
    return 1n << BigInt((((d & 3) | ((d & 8) >> 1)) + 1) & 7);
  }
  private timerMode(): number { return (this.get(REG.LVTT) >> 17) & 3; }

  private startTimer(now: bigint): void {
    const count = BigInt(this.get(REG.TMICT));
    if (count === 0n) { this.deadline = this.period = 0n; return; }
    this.period = count * this.timerDivide() * NS_PER_TICK;
    this.deadline = now + this.period;
  }

  private currentCount(now: bigint): number {
    if (this.deadline === 0n || this.period === 0n) return 0;
    const left = this.deadline - now;
    if (left <= 0n) return 0;
    return Number(left / (this.timerDivide() * NS_PER_TICK));
  }

  /** The deadline passed: raise the timer interrupt; a periodic timer goes on. */
  tick(now: bigint): void {
    if (this.deadline === 0n || now < this.deadline) return;
    const lvt = this.get(REG.LVTT);
    if (!(lvt & LVT_MASKED)) this.accept(lvt & 0xff, false);
    if (this.timerMode() === 1 && this.period > 0n) {
      const late = (now - this.deadline) % this.period;
      this.deadline = now + this.period - late;
    } else {
      this.deadline = 0n;
    }
  }

  read(off: number, now: bigint): number {
    switch (off & ~0xf) {
      case REG.PPR: return this.ppr();
      case REG.TMCCT: return this.currentCount(now);
      case REG.EOI: case REG.ICR2 + 0x10: return 0;
      default: return off < 0x400 ? this.get(off & ~0xf) : 0;
    }
  }

  write(off: number, value: number, now: bigint): void {
    const reg = off & ~0xf;
    switch (reg) {
      case REG.ID: this.set(REG.ID, value & 0xff000000); break;
      case REG.TPR: this.set(REG.TPR, value & 0xff); break;
      case REG.EOI: this.eoi(); break;
      case REG.LDR: this.set(REG.LDR, value & 0xff000000); break;
      case REG.DFR: this.set(REG.DFR, value | 0x0fffffff); break;
      case REG.SVR: {
        this.set(REG.SVR, value & 0x3ff);
        if (!(value & SVR_ENABLED)) { // software disable masks every LVT
          for (const r of [REG.LVTT, REG.LVTTHMR, REG.LVTPC, REG.LVT0, REG.LVT1, REG.LVTERR]) this.set(r, this.get(r) | LVT_MASKED);
        }
        break;
      }
      case REG.ESR: this.set(REG.ESR, 0); break;
      case REG.ICR2: this.set(REG.ICR2, value & 0xff000000); break;
      case REG.ICR: this.set(REG.ICR, value & ~(1 << 12)); this.sendIpi(value); break;
      case REG.LVTT: {
        const mode = (this.get(REG.LVTT) >> 17) & 3;
        this.set(REG.LVTT, this.softwareEnabled ? value & 0x700ff : (value & 0x700ff) | LVT_MASKED);
        if (((value >> 17) & 3) !== mode) this.deadline = this.period = 0n; // a mode change stops the timer
        break;
      }
      case REG.LVTTHMR: case REG.LVTPC: case REG.LVT0: case REG.LVT1: case REG.LVTERR: case REG.CMCI: {
        const masks = reg === REG.LVT0 || reg === REG.LVT1 ? 0x1a7ff : 0x107ff;
        this.set(reg, this.softwareEnabled ? value & masks : (value & masks) | LVT_MASKED);
        break;
      }
      case REG.TMICT: this.set(REG.TMICT, value); this.startTimer(now); break;
      case REG.TDCR: this.set(REG.TDCR, value & 0xb); break;
      default: break; // read-only or reserved: ignored, as on KVM
    }
  }

  private eoi(): void {
    const v = this.highest(REG.ISR);
    if (v < 0) return;
    this.setBit(REG.ISR, v, false);
    if (this.bit(REG.TMR, v)) this.host.eoi(v);
  }

  /** One CPU: only IPIs that reach this APIC (self, all-including-self, or its own ID) do anything. */
  private sendIpi(icr: number): void {
    const vector = icr & 0xff, mode = (icr >> 8) & 7, shorthand = (icr >> 18) & 3;
    const dest = this.get(REG.ICR2) >>> 24;
    const toSelf = shorthand === 1 || shorthand === 2 || (shorthand === 0 && !(icr & (1 << 11)) && (dest === this.id || dest === 0xff));
    if (toSelf && mode === 0) this.accept(vector, false);
  }

  /** The register page for the CPU state, with the timer's current count at 0x390. */
  save(now: bigint): Buffer {
    const p = Buffer.from(this.page);
    p.writeUInt32LE(this.currentCount(now), REG.TMCCT);
    return p;
  }

  /** Restores a saved page; a timer that was counting goes on from its current count. */
  restore(page: Buffer, now: bigint): void {
    page.copy(this.page, 0, 0, 1024);
    const current = BigInt(this.page.readUInt32LE(REG.TMCCT));
    this.set(REG.TMCCT, 0);
    this.deadline = this.period = 0n;
    if (this.get(REG.TMICT) !== 0) {
      this.period = BigInt(this.get(REG.TMICT)) * this.timerDivide() * NS_PER_TICK;
      if (current > 0n) this.deadline = now + current * this.timerDivide() * NS_PER_TICK;
      else if (this.timerMode() === 1) this.deadline = now + this.period;
    }
  }
}
