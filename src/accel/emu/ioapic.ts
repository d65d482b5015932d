// The IOAPIC of the emu accelerator (MMIO at 0xfec00000: IOREGSEL, IOWIN, and the EOI register of
// version 0x20), 24 pins, modelled on KVM's arch/x86/kvm/ioapic.c: an edge-triggered pin delivers
// on a rising edge while unmasked; a level-triggered one while its line is high, once per EOI
// (remote IRR).
import type { IoapicState } from '../index.js';

export const IOAPIC_BASE = 0xfec00000;
export const IOAPIC_SIZE = 0x100;
export const IOAPIC_PINS = 24;
const VERSION = 0x11 | ((IOAPIC_PINS - 1) << 16);

const MASKED = 1n << 16n, LEVEL = 1n << 15n, REMOTE_IRR = 1n << 14n, DELIVERY_STATUS = 1n << 12n;
const RO_BITS = REMOTE_IRR | DELIVERY_STATUS;

/** Where the IOAPIC sends a message (fixed/lowest priority, or ExtINT for the 8259). */
export interface IoapicHost { deliver(vector: number, level: boolean, destination: number, logical: boolean, mode: number): void }

export class Ioapic {
  id = 0;
  ioregsel = 0;
  /** Line level of each pin (bit per pin). */
  irr = 0;
  readonly redirtbl: bigint[] = new Array<bigint>(IOAPIC_PINS).fill(MASKED);

  constructor(private readonly host: IoapicHost) {}

  /** Drives a pin (GSI). */
  setLevel(pin: number, level: 0 | 1): void {
    if (pin < 0 || pin >= IOAPIC_PINS) return;
    const m = 1 << pin, was = (this.irr & m) !== 0;
    this.irr = level ? this.irr | m : this.irr & ~m;
    const e = this.redirtbl[pin];
    if (e & LEVEL) { if (level) this.service(pin); } else if (level && !was) this.service(pin);
  }

  private service(pin: number): void {
    const e = this.redirtbl[pin];
    if (e & MASKED) return;
    const level = (e & LEVEL) !== 0n;
    if (level && e & REMOTE_IRR) return;
    if (level) this.redirtbl[pin] = e | REMOTE_IRR;
    this.host.deliver(Number(e & 0xffn), level, Number(e >> 56n), (e & (1n << 11n)) !== 0n, Number((e >> 8n) & 7n));
  }

  /** The LAPIC's EOI of a level-triggered vector: clear remote IRR, deliver again if the line is still high. */
  eoi(vector: number): void {
    for (let pin = 0; pin < IOAPIC_PINS; pin++) {
      const e = this.redirtbl[pin];
      if (Number(e & 0xffn) !== vector || !(e & LEVEL) || !(e & REMOTE_IRR)) continue;
      this.redirtbl[pin] = e & ~REMOTE_IRR;
      if (this.irr & (1 << pin)) this.service(pin);
    }
  }

  read(off: number): number {
    if (off === 0x00) return this.ioregsel;
    if (off !== 0x10) return 0;
    const r = this.ioregsel;
    if (r === 0x00) return (this.id & 0xf) << 24;
    if (r === 0x01) return VERSION;
    if (r === 0x02) return (this.id & 0xf) << 24;
    const pin = (r - 0x10) >> 1;
    if (r < 0x10 || pin >= IOAPIC_PINS) return 0xffffffff;
    const e = this.redirtbl[pin];
    return Number(r & 1 ? e >> 32n : e & 0xffffffffn);
  }

  write(off: number, value: number): void {
    if (off === 0x00) { this.ioregsel = value & 0xff; return; }
    if (off === 0x40) { this.eoi(value & 0xff); return; }
    if (off !== 0x10) return;
    const r = this.ioregsel;
    if (r === 0x00) { this.id = (value >>> 24) & 0xf; return; }
    const pin = (r - 0x10) >> 1;
    if (r < 0x10 || pin >= IOAPIC_PINS) return;
    const e = this.redirtbl[pin], v = BigInt(value >>> 0);
    const next = r & 1 ? (e & 0xffffffffn) | (v << 32n) : (e & (0xffffffffn << 32n)) | (e & RO_BITS) | (v & ~RO_BITS & 0xffffffffn);
    this.redirtbl[pin] = (next & LEVEL) ? next : next & ~REMOTE_IRR;
    // A level-triggered line that is high delivers as soon as it is unmasked.
    if ((next & LEVEL) && !(next & MASKED) && this.irr & (1 << pin)) this.service(pin);
  }

  getState(): IoapicState {
    return { base: IOAPIC_BASE, id: this.id, ioregsel: this.ioregsel, irr: this.irr, redirtbl: [...this.redirtbl] };
  }

  setState(s: IoapicState): void {
    this.id = s.id; this.ioregsel = s.ioregsel; this.irr = s.irr >>> 0;
    for (let i = 0; i < IOAPIC_PINS; i++) this.redirtbl[i] = BigInt.asUintN(64, s.redirtbl[i] ?? MASKED);
  }
}
