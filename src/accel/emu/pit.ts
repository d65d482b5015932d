// The 8254 PIT of the emu accelerator (ports 0x40-0x43, and 0x61 for channel 2's gate and
// output), after QEMU's hw/timer/i8254*.c, whose channel state is also KVM's kvm_pit_state2.
// Counting follows CLOCK_MONOTONIC at 1.193182 MHz; channel 0's output drives GSI 0.
import type { PitChannelState, PitState } from '../index.js';

export const PIT_PORTS = [0x40, 0x41, 0x42, 0x43, 0x61] as const;
const FREQ = 1193182n;
const NS = 1000000000n;
const RW = { LSB: 1, MSB: 2, WORD0: 3, WORD1: 4 } as const;

const ticksSince = (loadTime: bigint, now: bigint): bigint => ((now - loadTime) * FREQ) / NS;

function fresh(gate: number): PitChannelState {
  return {
    count: 0x10000, latchedCount: 0, countLatched: 0, statusLatched: 0, status: 0, readState: 0, writeState: 0,
    writeLatch: 0, rwMode: 0, mode: 0, bcd: 0, gate, countLoadTime: 0n,
  };
}

export class Pit {
  readonly channels: PitChannelState[] = [fresh(1), fresh(1), fresh(0)];
  flags = 0;
  private speaker = 0;
  /** CLOCK_MONOTONIC (ns) when channel 0 next interrupts, or 0n. */
  deadline = 0n;
  private lastOut0 = 0;
  /** Periodic modes: the last period of channel 0 that raised IRQ 0. */
  private lastPeriod = 0n;

  /** `irq0(level)` drives GSI 0 with channel 0's output. */
  constructor(private readonly irq0: (level: 0 | 1) => void) {}

  private count(c: PitChannelState, now: bigint): number {
    const d = ticksSince(c.countLoadTime, now), n = BigInt(c.count);
    switch (c.mode) {
      case 0: case 1: case 4: case 5: return Number((n - d) & 0xffffn);
      case 3: return Number(n - ((2n * d) % n)); // twice as fast
      default: return Number(n - (d % n));
    }
  }

  private out(c: PitChannelState, now: bigint): number {
    const d = ticksSince(c.countLoadTime, now), n = BigInt(c.count);
    switch (c.mode) {
      case 0: return d >= n ? 1 : 0;
      case 1: return d < n ? 1 : 0;
      case 2: return d % n === 0n && d !== 0n ? 1 : 0;
      case 3: return d % n < (n + 1n) >> 1n ? 1 : 0;
      case 4: case 5: return d === n ? 1 : 0;
      default: return 0;
    }
  }

  /** When channel `c`'s output next changes, or -1n. */
  private nextTransition(c: PitChannelState, now: bigint): bigint {
    const d = ticksSince(c.countLoadTime, now), n = BigInt(c.count);
    let next: bigint;
    switch (c.mode) {
      case 0: case 1: if (d < n) next = n; else return -1n; break;
      case 2: { const base = (d / n) * n; next = d - base === 0n && d !== 0n ? base + 1n : base + n; break; }
      case 3: {
        const base = (d / n) * n, half = (n + 1n) >> 1n;
        next = d - base < half ? base + half : base + n;
        break;
      }
      case 4: case 5: if (d < n) next = n; else if (d === n) next = n + 1n; else return -1n; break;
      default: return -1n;
    }
    // Back from ticks to ns, rounded up so the output has changed at that time.
    return c.countLoadTime + (next * NS + FREQ - 1n) / FREQ;
  }

  private load(c: PitChannelState, value: number, now: bigint): void {
    c.count = value === 0 ? 0x10000 : value;
    c.countLoadTime = now;
    if (c === this.channels[0]) { this.lastPeriod = 0n; this.update(now); }
  }

  /**
   * Channel 0 and IRQ 0: the periodic modes (2, 3) pulse it once per period (periods missed
   * while nobody looked are coalesced, as a late timer interrupt is); the others drive it with
   * the output level.
   */
  update(now: bigint): void {
    const c = this.channels[0];
    if (!c.gate || c.countLoadTime === 0n) { this.deadline = 0n; return; }
    const n = BigInt(c.count);
    if (c.mode === 2 || c.mode === 3) {
      const period = ticksSince(c.countLoadTime, now) / n;
      if (period > this.lastPeriod) { this.irq0(1); this.irq0(0); this.lastPeriod = period; }
      this.deadline = c.countLoadTime + ((this.lastPeriod + 1n) * n * NS + FREQ - 1n) / FREQ;
      return;
    }
    const out = this.out(c, now);
    if (out !== this.lastOut0) { this.lastOut0 = out; this.irq0(out as 0 | 1); }
    const next = this.nextTransition(c, now);
    this.deadline = next < 0n ? 0n : next;
  }

  handles(port: number): boolean { return (PIT_PORTS as readonly number[]).includes(port); }

  write(port: number, value: number, now: bigint): void {
    value &= 0xff;
    if (port === 0x61) {
      this.speaker = value & 3;
      const c = this.channels[2];
      if (!c.gate && value & 1) c.countLoadTime = now; // a rising gate restarts the count
      c.gate = value & 1;
      return;
    }
    if (port === 0x43) {
      const ch = value >> 6;
      if (ch === 3) { // read-back
        for (let i = 0; i < 3; i++) {
          if (!(value & (2 << i))) continue;
          const c = this.channels[i];
          if (!(value & 0x20)) this.latch(c, now);
          if (!(value & 0x10) && !c.statusLatched) {
            c.status = (this.out(c, now) << 7) | (c.rwMode << 4) | (c.mode << 1) | c.bcd;
            c.statusLatched = 1;
          }
        }
        return;
      }
      const c = this.channels[ch], access = (value >> 4) & 3;
      if (access === 0) { this.latch(c, now); return; }
      c.rwMode = access;
      c.readState = c.writeState = access;
      c.mode = (value >> 1) & 7;
      if (c.mode > 5) c.mode -= 4;
      c.bcd = value & 1;
      return;
    }
    const c = this.channels[port & 3];
    switch (c.writeState) {
      case RW.LSB: this.load(c, value, now); break;
      case RW.MSB: this.load(c, value << 8, now); break;
      case RW.WORD0: c.writeLatch = value; c.writeState = RW.WORD1; break;
      case RW.WORD1: this.load(c, c.writeLatch | (value << 8), now); c.writeState = RW.WORD0; break;
      default: break;
    }
  }

  private latch(c: PitChannelState, now: bigint): void {
    if (c.countLatched) return;
    c.latchedCount = this.count(c, now);
    c.countLatched = c.rwMode;
  }

  read(port: number, now: bigint): number {
    if (port === 0x61) {
      const c = this.channels[2];
      const refresh = Number((now / 15085n) & 1n); // the refresh toggle (bit 4), ~66 kHz
      return this.speaker | (refresh << 4) | (c.gate ? this.out(c, now) << 5 : 0);
    }
    const c = this.channels[port & 3];
    if (port === 0x43) return 0xff;
    if (c.statusLatched) { c.statusLatched = 0; return c.status; }
    if (c.countLatched) {
      switch (c.countLatched) {
        case RW.LSB: c.countLatched = 0; return c.latchedCount & 0xff;
        case RW.MSB: c.countLatched = 0; return (c.latchedCount >> 8) & 0xff;
        default: c.countLatched = RW.MSB; return c.latchedCount & 0xff; // WORD0: low, then high
      }
    }
    const count = this.count(c, now);
    switch (c.readState) {
      case RW.LSB: return count & 0xff;
      case RW.MSB: return (count >> 8) & 0xff;
      case RW.WORD0: c.readState = RW.WORD1; return count & 0xff;
      default: c.readState = RW.WORD0; return (count >> 8) & 0xff;
    }
  }

  getState(): PitState { return { channels: this.channels.map((c) => ({ ...c })), flags: this.flags }; }

  setState(s: PitState, now: bigint): void {
    s.channels.forEach((c, i) => { if (this.channels[i]) Object.assign(this.channels[i], c); });
    this.flags = s.flags;
    this.lastOut0 = -1; // drive GSI 0 with the restored output
    const c = this.channels[0];
    this.lastPeriod = c.countLoadTime ? ticksSince(c.countLoadTime, now) / BigInt(c.count) : 0n;
    this.update(now);
  }
}
