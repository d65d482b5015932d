// The vCPU run loops (vmm/vcpus.ts) over a stand-in accelerator vCPU: what the loops promise about
// pausing, whatever the accelerator. Needs no KVM and no guest.
import { describe, it, expect } from 'vitest';
import { Vcpus } from '../vmm/vcpus.js';
import type { Vcpu, VcpuExit, CpuState } from '../src/accel/index.js';

/** A vCPU that "runs" until asked to exit; after an I/O exit it must be entered again to finish the instruction. */
class StandInVcpu implements Vcpu {
  readonly id = 0;
  runs = 0;
  /** Exits handed out, in order, before it just runs until asked to stop. */
  script: VcpuExit[] = [];
  private exitRequested = false;
  private wake?: () => void;
  /** Whether the last run ended mid-instruction (an I/O exit not yet completed by another run). */
  midInstruction = false;
  async run(): Promise<VcpuExit> {
    this.runs++;
    this.midInstruction = false;
    const next = this.script.shift();
    if (next) { this.midInstruction = next.kind === 'io'; return next; }
    if (!this.exitRequested) await new Promise<void>((r) => { this.wake = r; });
    return { kind: 'interrupted' };
  }
  requestExit(): void { this.exitRequested = true; this.wake?.(); }
  clearExitRequest(): void { this.exitRequested = false; }
  getState(): CpuState { throw new Error('not needed'); }
  setState(): void { throw new Error('not needed'); }
  tscKhz(): number { return 1; }
}

const within = <T>(p: Promise<T>, ms: number, what: string): Promise<T> =>
  Promise.race([p, new Promise<T>((_, rej) => setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms))]);

describe('vCPU run loops', () => {
  it('two pauses at once both complete (a QMP stop during an update\'s own pause)', async () => {
    const v = new StandInVcpu();
    const loops = new Vcpus({ in: () => 0, out: () => {} }, () => {}, () => {});
    loops.start([v]);
    await new Promise((r) => setTimeout(r, 5));
    await within(Promise.all([loops.pause(), loops.pause()]), 2000, 'both pauses');
    loops.resume();
    await new Promise((r) => setTimeout(r, 5));
    await within(loops.pause(), 2000, 'a later pause');
    await loops.stop();
  });

  it('parks a vCPU only between instructions: after an I/O exit it is entered once more', async () => {
    const v = new StandInVcpu();
    const data = Buffer.alloc(1);
    v.script = [{ kind: 'io', port: 0x3fd, size: 1, write: false, count: 1, data }];
    let reads = 0;
    const loops = new Vcpus({ in: () => { reads++; return 0x60; }, out: () => {} }, () => {}, () => {});
    loops.start([v]);
    await within(loops.pause(), 2000, 'the pause');
    expect(reads).toBe(1); // the IN was answered
    expect(data[0]).toBe(0x60);
    expect(v.midInstruction).toBe(false); // and the vCPU entered again to complete it before parking
    expect(v.runs).toBeGreaterThanOrEqual(2);
    await loops.stop();
  });
});
