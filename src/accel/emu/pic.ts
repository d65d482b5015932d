// The two cascaded 8259A PICs of the emu accelerator (ports 0x20/0x21, 0xa0/0xa1, ELCR 0x4d0/0x4d1),
// after QEMU's hw/intc/i8259.c, whose state is also KVM's kvm_pic_state: initialization words,
// masking, EOI (specific, non-specific, rotating, automatic), polling, IRR/ISR reads, special mask.
import type { PicState } from '../index.js';

export const PIC_PORTS = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1] as const;

class Chip implements PicState {
  lastIrr = 0; irr = 0; imr = 0; isr = 0; priorityAdd = 0; irqBase = 0; readRegSelect = 0; poll = 0;
  specialMask = 0; initState = 0; autoEoi = 0; rotateOnAutoEoi = 0; specialFullyNestedMode = 0; init4 = 0;
  elcr = 0;
  constructor(readonly elcrMask: number) {}

  reset(): void {
    this.lastIrr = this.irr = this.imr = this.isr = this.priorityAdd = this.irqBase = this.readRegSelect = 0;
    this.poll = this.specialMask = this.initState = this.autoEoi = this.rotateOnAutoEoi = 0;
    this.specialFullyNestedMode = this.init4 = 0;
  }

  /** Priority (0 highest) of the highest bit of `mask`, 8 if none. */
  priority(mask: number): number {
    if (mask === 0) return 8;
    let p = 0;
    while ((mask & (1 << ((p + this.priorityAdd) & 7))) === 0) p++;
    return p;
  }

  /** The IRQ the chip asks the CPU for, or -1. */
  irq(isMaster: boolean): number {
    const mask = this.irr & ~this.imr;
    const p = this.priority(mask);
    if (p === 8) return -1;
    // The master in special fully nested mode lets the cascaded slave IRQ interrupt its own service.
    let inService = this.isr;
    if (this.specialMask) inService &= ~this.imr;
    if (this.specialFullyNestedMode && isMaster) inService &= ~(1 << 2);
    const cur = this.priority(inService);
    return p < cur ? (p + this.priorityAdd) & 7 : -1;
  }

  setIrq(irq: number, level: number): void {
    const m = 1 << irq;
    if (this.elcr & m) { // level triggered
      if (level) { this.irr |= m; this.lastIrr |= m; } else { this.irr &= ~m; this.lastIrr &= ~m; }
    } else if (level) { // edge triggered
      if (!(this.lastIrr & m)) this.irr |= m;
      this.lastIrr |= m;
    } else {
      this.lastIrr &= ~m;
    }
  }

  intack(irq: number): void {
    if (this.autoEoi) {
      if (this.rotateOnAutoEoi) this.priorityAdd = (irq + 1) & 7;
    } else {
      this.isr |= 1 << irq;
    }
    if (!(this.elcr & (1 << irq))) this.irr &= ~(1 << irq); // a level IRQ stays pending while its line is high
  }
}

export class Pic {
  readonly chips = [new Chip(0xf8), new Chip(0xde)] as const;
  /** Called when the master's output may have changed. */
  constructor(private readonly changed: () => void) {}

  private update(): void {
    const [m, s] = this.chips;
    m.setIrq(2, s.irq(false) >= 0 ? 1 : 0);
    this.changed();
  }

  /** Whether the master asks the CPU for an interrupt (INTR). */
  get output(): boolean { return this.chips[0].irq(true) >= 0; }

  /** Drives IRQ 0-15. */
  setIrq(irq: number, level: 0 | 1): void {
    if (irq < 0 || irq > 15) return;
    this.chips[irq >> 3].setIrq(irq & 7, level);
    this.update();
  }

  /** The CPU takes the interrupt (INTA): returns the vector. */
  acknowledge(): number {
    const [m, s] = this.chips;
    let irq = m.irq(true), vector: number;
    if (irq >= 0) {
      m.intack(irq);
      if (irq === 2) {
        const irq2 = s.irq(false);
        if (irq2 >= 0) s.intack(irq2);
        vector = s.irqBase + (irq2 >= 0 ? irq2 : 7); // no slave IRQ: spurious IRQ 15
        irq = irq2 + 8;
      } else {
        vector = m.irqBase + irq;
      }
    } else {
      vector = m.irqBase + 7; // spurious IRQ 7
    }
    this.update();
    return vector;
  }

  handles(port: number): boolean { return (PIC_PORTS as readonly number[]).includes(port); }

  write(port: number, value: number): void {
    if (port === 0x4d0 || port === 0x4d1) {
      const c = this.chips[port - 0x4d0];
      c.elcr = value & c.elcrMask;
      this.update();
      return;
    }
    const c = this.chips[port >> 7], a0 = port & 1;
    value &= 0xff;
    if (a0 === 0) {
      if (value & 0x10) { // ICW1
        c.reset();
        c.initState = 1;
        c.init4 = value & 1;
        if (value & 0x08) { /* level-triggered mode via ICW1: not supported, as in QEMU */ }
      } else if (value & 0x08) { // OCW3
        if (value & 0x04) c.poll = 1;
        if (value & 0x02) c.readRegSelect = value & 1;
        if (value & 0x40) c.specialMask = (value >> 5) & 1;
      } else { // OCW2
        const cmd = value >> 5;
        switch (cmd) {
          case 0: case 4: c.rotateOnAutoEoi = cmd >> 2; break;
          case 1: case 5: { // non-specific EOI (rotate)
            const p = c.priority(c.isr);
            if (p !== 8) {
              const irq = (p + c.priorityAdd) & 7;
              c.isr &= ~(1 << irq);
              if (cmd === 5) c.priorityAdd = (irq + 1) & 7;
            }
            break;
          }
          case 3: c.isr &= ~(1 << (value & 7)); break; // specific EOI
          case 6: c.priorityAdd = (value + 1) & 7; break; // set priority
          case 7: c.isr &= ~(1 << (value & 7)); c.priorityAdd = (value + 1) & 7; break;
          default: break;
        }
      }
    } else {
      switch (c.initState) {
        case 0: c.imr = value; break; // OCW1
        case 1: c.irqBase = value & 0xf8; c.initState = 2; break; // ICW2 (ICW3 follows; single mode unsupported)
        case 2: c.initState = c.init4 ? 3 : 0; break; // ICW3
        case 3: c.specialFullyNestedMode = (value >> 4) & 1; c.autoEoi = (value >> 1) & 1; c.initState = 0; break; // ICW4
      }
    }
    this.update();
  }

  read(port: number): number {
    if (port === 0x4d0 || port === 0x4d1) return this.chips[port - 0x4d0].elcr;
    const c = this.chips[port >> 7], master = c === this.chips[0];
    if (c.poll) { // poll command: acknowledge the highest IRQ of this chip
      c.poll = 0;
      const irq = c.irq(master);
      if (irq < 0) return 0x07;
      c.intack(irq);
      this.update();
      return irq | 0x80;
    }
    if (port & 1) return c.imr;
    return c.readRegSelect ? c.isr : c.irr;
  }

  getState(): [PicState, PicState] {
    return this.chips.map((c) => ({ ...c })) as unknown as [PicState, PicState];
  }

  setState(s: [PicState, PicState]): void {
    s.forEach((st, i) => {
      const c = this.chips[i] as unknown as Record<string, number>;
      for (const [k, v] of Object.entries(st)) if (k !== 'elcrMask' && typeof v === 'number') c[k] = v;
    });
    this.update();
  }
}
