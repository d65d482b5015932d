// 16550A UART at COM1 (0x3f8, IRQ 4), transmit side. Every vCPU exit is handled on the main
// thread, so the registers need no lock. Receive is not modelled: LSR never reports data ready.

import { writeSync } from 'node:fs';
import { pollOne, POLLOUT } from '../src/libc.js';

export const COM1_BASE = 0x3f8, COM1_IRQ = 4;
/** isa-debug-exit style port: the value written becomes the VMM's exit status. */
export const EXIT_PORT = 0xf4;

// Saved registers, in this order (the state schema stores them as an array).
const IER = 0, LCR = 1, MCR = 2, SCR = 3, DLL = 4, DLM = 5, FCR = 6, THRI_PENDING = 7;
const STATE_WORDS = 8;

const LCR_DLAB = 0x80, IER_THRI = 0x02, IIR_NONE = 0x01, IIR_THRI = 0x02, IIR_FIFO = 0xc0;
const LSR_THRE_TEMT = 0x60, MSR_DCD_DSR_CTS = 0xb0;

export class Serial {
  private readonly regs = new Int32Array(STATE_WORDS);
  /**
   * @param emit called with each transmitted byte
   * @param setIrq drives the UART's interrupt line
   */
  constructor(private emit: (byte: number) => void, private setIrq: (level: 0 | 1) => void) {}

  static initialState(): number[] { const s = new Array(STATE_WORDS).fill(0); s[DLL] = 12; return s; }
  save(): number[] { return Array.from(this.regs); }
  load(words: number[]): void { this.regs.set(words.slice(0, STATE_WORDS)); }

  private updateIrq(): void {
    const r = this.regs;
    this.setIrq((r[IER] & IER_THRI) !== 0 && r[THRI_PENDING] !== 0 ? 1 : 0);
  }

  read(offset: number): number {
    const r = this.regs;
    const dlab = (r[LCR] & LCR_DLAB) !== 0;
    switch (offset) {
      case 0: return dlab ? r[DLL] : 0;
      case 1: return dlab ? r[DLM] : r[IER];
      case 2: {
        const fifo = (r[FCR] & 1) ? IIR_FIFO : 0;
        if ((r[IER] & IER_THRI) && r[THRI_PENDING]) { r[THRI_PENDING] = 0; this.updateIrq(); return IIR_THRI | fifo; }
        return IIR_NONE | fifo;
      }
      case 3: return r[LCR];
      case 4: return r[MCR];
      case 5: return LSR_THRE_TEMT;
      case 6: return MSR_DCD_DSR_CTS;
      default: return r[SCR];
    }
  }

  write(offset: number, value: number): void {
    const r = this.regs;
    const dlab = (r[LCR] & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        if (dlab) { r[DLL] = value; break; }
        this.emit(value);
        r[THRI_PENDING] = 1; // transmitted at once: the holding register is empty again
        this.updateIrq();
        break;
      case 1:
        if (dlab) { r[DLM] = value; break; }
        if ((value & IER_THRI) && !(r[IER] & IER_THRI)) r[THRI_PENDING] = 1;
        r[IER] = value & 0x0f;
        this.updateIrq();
        break;
      case 2: r[FCR] = value; break;
      case 3: r[LCR] = value; break;
      case 4: r[MCR] = value; break;
      case 7: r[SCR] = value; break;
      default: break; // LSR/MSR are read-only
    }
  }
}

/**
 * The host side of the UART: each transmitted byte written to `fd`. A reader that is slow (a full
 * non-blocking pipe: EAGAIN) is waited for, up to 10 s per byte; one that is gone (EPIPE), or
 * that stops reading for that long, costs the guest its output, never the guest itself: the
 * output stops with one line on stderr and the guest runs on.
 */
export function fdSink(fd: number, label = 'serial output'): (byte: number) => void {
  const one = Buffer.alloc(1);
  let stopped = false;
  return (byte) => {
    if (stopped) return;
    one[0] = byte;
    for (let waited = 0; ;) {
      try { writeSync(fd, one); return; } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' && waited < 10_000) { pollOne(fd, POLLOUT, 100); waited += 100; continue; }
        stopped = true;
        process.stderr.write(`minivmm: ${label} stopped (${code === 'EAGAIN' ? 'nobody read it for 10 s' : code ?? (e as Error).message}); the guest runs on\n`);
        return;
      }
    }
  };
}
