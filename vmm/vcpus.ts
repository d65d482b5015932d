// The vCPU run loops, over the accelerator seam: each vCPU's run() blocks a libuv pool thread
// (KVM_RUN, or the emulator's slice) and its exits are handled here, on the main thread. No
// worker_threads: starting one costs tens of ms, which a live update would pay in its blackout.
import type { Vcpu, VcpuExit } from '../src/accel/index.js';

export type MmioHandler = (addr: number, isWrite: boolean, data: Buffer) => void;
export interface PioHandler { in(port: number, size: number): number; out(port: number, size: number, value: number): void }
export type VcpuEvent = { type: 'exit'; code: number } | { type: 'fatal'; message: string };
/** Thrown by a port handler to end the VM with an exit status (the exit port). */
export class GuestExit extends Error { constructor(readonly code: number) { super(`guest exit ${code}`); } }

/** Extra pool threads for the vCPUs: each blocks one for as long as the guest runs. */
export const POOL_RESERVE = 4;

/**
 * `atBoundary`: the vCPU's last run ended between two instructions. After an I/O or MMIO exit it
 * did not: the accelerator completes that instruction (a port IN takes its value) only when it is
 * entered again, so its state is not whole until then (KVM_RUN and emu alike).
 */
interface Loop { vcpu: Vcpu; inRun: boolean; atBoundary: boolean; parked?: () => void; done: Promise<void> }

export class Vcpus {
  private loops: Loop[] = [];
  private pauseRequested = false;
  private stopped = false;
  private resumeWaiters: (() => void)[] = [];

  constructor(private pio: PioHandler, private mmio: MmioHandler, private onEvent: (e: VcpuEvent) => void) {}

  /** When the first run() was issued (performance.now(), ms since this process started). */
  firstRunAt?: number;

  /** Starts a run loop per vCPU (parked at once when `paused`). */
  start(vcpus: readonly Vcpu[], paused = false): void {
    if (!paused) this.firstRunAt ??= performance.now();
    this.pauseRequested = paused;
    for (const vcpu of vcpus) {
      const loop: Loop = { vcpu, inRun: false, atBoundary: true, done: Promise.resolve() };
      loop.done = this.run(loop).catch((e) => this.onEvent({ type: 'fatal', message: `vCPU ${vcpu.id}: ${(e as Error).message}` }));
      this.loops.push(loop);
    }
  }

  private async run(loop: Loop): Promise<void> {
    const { vcpu } = loop;
    while (!this.stopped) {
      if (this.pauseRequested && loop.atBoundary) {
        vcpu.clearExitRequest();
        loop.parked?.();
        await new Promise<void>((r) => this.resumeWaiters.push(r));
        continue;
      }
      loop.inRun = true;
      // Pausing in the middle of an instruction: enter once more to complete it; the exit request
      // makes the run return at once after that.
      if (this.pauseRequested) vcpu.requestExit();
      const exit = await vcpu.run();
      loop.inRun = false;
      loop.atBoundary = exit.kind === 'interrupted' || exit.kind === 'hlt';
      if (!this.handleExit(exit)) return;
    }
  }

  /** Returns false when the vCPU must stop. */
  private handleExit(exit: VcpuExit): boolean {
    switch (exit.kind) {
      case 'io': {
        const { data, size, port } = exit;
        try {
          for (let at = 0; at < data.length; at += size) {
            if (exit.write) this.pio.out(port, size, data.readUIntLE(at, size));
            else data.writeUIntLE(this.pio.in(port, size) & (2 ** (size * 8) - 1), at, size);
          }
        } catch (e) {
          if (e instanceof GuestExit) { this.onEvent({ type: 'exit', code: e.code }); return false; }
          throw e;
        }
        return true;
      }
      case 'mmio': this.mmio(exit.addr, exit.write, exit.data); return true;
      case 'interrupted': case 'hlt': return true;
      case 'system-event': this.onEvent({ type: 'exit', code: 0 }); return false;
      case 'fatal': this.onEvent({ type: 'fatal', message: exit.message }); return false;
    }
  }

  /** Asks every vCPU in a run to leave it. */
  private kick(): void {
    for (const l of this.loops) if (l.inRun) l.vcpu.requestExit();
  }

  /** The pause under way, shared by every caller (a QMP stop during an update's own pause). */
  private pausing?: Promise<void>;

  /** Resolves when every vCPU is out of its run and parked. */
  pause(): Promise<void> {
    this.pausing ??= this.parkAll().finally(() => { this.pausing = undefined; });
    return this.pausing;
  }

  private async parkAll(): Promise<void> {
    this.pauseRequested = true;
    const parked = this.loops.map((l) => (l.inRun ? new Promise<void>((r) => { l.parked = r; }) : Promise.resolve()));
    this.kick();
    // A request can land just before a run starts (the accelerator keeps it for that run) or be
    // lost to a thread that is not in its run yet (KVM's signal): re-kick until every vCPU is parked.
    let settled = false;
    const all = Promise.all(parked).then(() => { settled = true; });
    while (!settled) await Promise.race([all, new Promise((r) => setTimeout(r, 2))]).then(() => { if (!settled) this.kick(); });
    for (const l of this.loops) l.parked = undefined;
  }

  resume(): void {
    this.pauseRequested = false;
    const w = this.resumeWaiters;
    this.resumeWaiters = [];
    for (const r of w) r();
  }

  /**
   * Takes every vCPU out of its run for good. Needed before process.exit: libuv joins its pool
   * threads at exit, and one blocked in a run (a guest spinning without exits) never returns.
   */
  async stop(): Promise<void> {
    await this.pause();
    this.stopped = true;
    this.resume();
  }
}
