// The vCPU run loops. Each vCPU's blocking KVM_RUN runs on a libuv pool thread (ffi-rs
// runInNewThread); exits are handled on the main thread. No worker_threads: starting one costs
// tens of ms, which a live update would pay inside the guest's blackout.
// Pausing: set kvm_run.immediate_exit and signal the pool threads, so a KVM_RUN in progress returns
// EINTR at once and a KVM_RUN about to start returns at once.
import { readdirSync } from 'node:fs';
import ffi from 'ffi-rs';
import { tgkill, SIGUSR2, errnoName } from '../src/libc.js';
import { KVM, EXIT, RUN, exitName, decodeRegs, SREGS, type VcpuFd } from '../src/kvm.js';
import { translate, type GuestMemory } from '../src/memory.js';

export type MmioHandler = (addr: number, isWrite: boolean, data: Buffer) => void;
export interface PioHandler { in(port: number, size: number): number; out(port: number, size: number, value: number): void }
export type VcpuEvent = { type: 'exit'; code: number } | { type: 'fatal'; message: string };
/** Thrown by a port handler to end the VM with an exit status (the exit port). */
export class GuestExit extends Error { constructor(readonly code: number) { super(`guest exit ${code}`); } }

/** Extra pool threads for the vCPUs: each blocks one for as long as the guest runs. */
export const POOL_RESERVE = 4;

// The signal's only job is to interrupt KVM_RUN; Node's handler runs on the main loop and does nothing.
process.on('SIGUSR2', () => {});

const { DataType: T } = ffi;
const EINTR = 4, EAGAIN = 11;

interface Loop { vcpu: VcpuFd; inRun: boolean; parked?: () => void; done: Promise<void> }

export class Vcpus {
  private loops: Loop[] = [];
  private pauseRequested = false;
  private stopped = false;
  private resumeWaiters: (() => void)[] = [];

  constructor(private mem: GuestMemory, private pio: PioHandler, private mmio: MmioHandler, private onEvent: (e: VcpuEvent) => void) {}

  /** When the first KVM_RUN was issued (performance.now(), ms since this process started). */
  firstRunAt?: number;

  /** Starts a run loop per vCPU (parked at once when `paused`). */
  start(vcpus: VcpuFd[], paused = false): void {
    if (!paused) this.firstRunAt ??= performance.now();
    this.pauseRequested = paused;
    for (const vcpu of vcpus) {
      const loop: Loop = { vcpu, inRun: false, done: Promise.resolve() };
      loop.done = this.run(loop).catch((e) => this.onEvent({ type: 'fatal', message: `vCPU ${vcpu.id}: ${(e as Error).message}` }));
      this.loops.push(loop);
    }
  }

  private async run(loop: Loop): Promise<void> {
    const { vcpu } = loop;
    while (!this.stopped) {
      if (this.pauseRequested) {
        vcpu.run[RUN.immediateExit] = 0;
        loop.parked?.();
        await new Promise<void>((r) => this.resumeWaiters.push(r));
        continue;
      }
      loop.inRun = true;
      const r = await (ffi.load({
        library: 'libc', funcName: 'ioctl', retType: T.I32, paramsType: [T.I32, T.U64, T.U64],
        paramsValue: [vcpu.fd, KVM.RUN, 0], errno: true, runInNewThread: true,
      }) as unknown as Promise<{ value: number; errnoCode: number }>);
      loop.inRun = false;
      if (r.value === -1) {
        if (r.errnoCode === EINTR || r.errnoCode === EAGAIN) continue;
        throw new Error(`KVM_RUN failed: ${errnoName(r.errnoCode)}`);
      }
      if (!this.handleExit(vcpu)) return;
    }
  }

  /** Returns false when the vCPU must stop. */
  private handleExit(vcpu: VcpuFd): boolean {
    const run = vcpu.run;
    const reason = run.readUInt32LE(RUN.exitReason);
    switch (reason) {
      case EXIT.IO: {
        const out = run[RUN.io.direction] === 1, size = run[RUN.io.size], port = run.readUInt16LE(RUN.io.port);
        const count = run.readUInt32LE(RUN.io.count), off = Number(run.readBigUInt64LE(RUN.io.dataOffset));
        try {
          for (let i = 0, at = off; i < count; i++, at += size) {
            if (out) this.pio.out(port, size, run.readUIntLE(at, size));
            else run.writeUIntLE(this.pio.in(port, size) & (2 ** (size * 8) - 1), at, size);
          }
        } catch (e) {
          if (e instanceof GuestExit) { this.onEvent({ type: 'exit', code: e.code }); return false; }
          throw e;
        }
        return true;
      }
      case EXIT.MMIO: {
        const len = run.readUInt32LE(RUN.mmio.len);
        this.mmio(Number(run.readBigUInt64LE(RUN.mmio.physAddr)), run[RUN.mmio.isWrite] !== 0, run.subarray(RUN.mmio.data, RUN.mmio.data + len));
        return true;
      }
      case EXIT.INTR: case EXIT.HLT: return true;
      case EXIT.INTERNAL_ERROR:
        return this.fatal(`guest emulation failure (KVM_EXIT_INTERNAL_ERROR, suberror ${run.readUInt32LE(RUN.internal.suberror)}) on vCPU ${vcpu.id}: ${this.describeRip(vcpu)}`);
      case EXIT.SHUTDOWN:
        return this.fatal(`guest shut down (triple fault) on vCPU ${vcpu.id}: ${this.describeRip(vcpu)}`);
      case EXIT.FAIL_ENTRY:
        return this.fatal(`KVM_EXIT_FAIL_ENTRY on vCPU ${vcpu.id}: hardware reason 0x${run.readBigUInt64LE(RUN.failEntry.reason).toString(16)}`);
      case EXIT.SYSTEM_EVENT:
        this.onEvent({ type: 'exit', code: 0 });
        return false;
      default:
        return this.fatal(`unexpected KVM exit ${exitName(reason)} on vCPU ${vcpu.id}`);
    }
  }

  private fatal(message: string): false { this.onEvent({ type: 'fatal', message }); return false; }

  /** "guest RIP 0x…, instruction bytes 0f 38 …" for a failure report. */
  private describeRip(vcpu: VcpuFd): string {
    const rip = decodeRegs(vcpu.getRegs()).rip;
    const sregs = vcpu.getSregs();
    const paging = (sregs.readBigUInt64LE(SREGS.cr0) & 0x80000000n) !== 0n;
    const read64 = (gpa: number): bigint => { try { return this.mem.view(gpa, 8).readBigUInt64LE(); } catch { return 0n; } };
    const gpa = paging ? translate(read64, sregs.readBigUInt64LE(SREGS.cr3), rip) : Number(rip);
    let bytes = 'unreadable';
    if (gpa !== null) { try { bytes = [...this.mem.view(gpa, 15)].map((x) => x.toString(16).padStart(2, '0')).join(' '); } catch { /* not RAM */ } }
    return `guest RIP 0x${rip.toString(16)}, instruction bytes ${bytes}`;
  }

  /** Kicks every vCPU out of KVM_RUN: immediate_exit for a run about to start, a signal for one in progress. */
  private kick(): void {
    for (const l of this.loops) if (l.inRun) l.vcpu.run[RUN.immediateExit] = 1;
    if (!this.loops.some((l) => l.inRun)) return;
    // The pool thread running a given KVM_RUN is not known: signal every thread but this one.
    for (const tid of readdirSync('/proc/self/task')) {
      if (Number(tid) !== process.pid) { try { tgkill(process.pid, Number(tid), SIGUSR2); } catch { /* thread ended */ } }
    }
  }

  /** Resolves when every vCPU is out of KVM_RUN and parked. */
  async pause(): Promise<void> {
    this.pauseRequested = true;
    const parked = this.loops.map((l) => (l.inRun ? new Promise<void>((r) => { l.parked = r; }) : Promise.resolve()));
    this.kick();
    // A signal can land just before the ioctl starts (immediate_exit covers it) or be lost to a
    // thread that is not in KVM_RUN yet: re-kick until every vCPU is parked.
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
   * Takes every vCPU out of KVM_RUN for good. Needed before process.exit: libuv joins its pool
   * threads at exit, and one blocked in KVM_RUN (a guest spinning without exits) never returns.
   */
  async stop(): Promise<void> {
    await this.pause();
    this.stopped = true;
    this.resume();
  }
}
