// The main thread's side of the vCPU threads: start, pause (immediate_exit + a signal to the
// thread, so a vCPU blocked in KVM_RUN comes out at once), resume, stop; and MMIO service.
import { Worker } from 'node:worker_threads';
import { tgkill, SIGUSR2 } from '../src/libc.js';
import { RUN, type VcpuFd } from '../src/kvm.js';
import { CTL, CTL_WORDS, REQ, STATE, MBOX, MBOX_BYTES, type VcpuThreadData, type VcpuStart } from './vcpu-protocol.js';

export type MmioHandler = (addr: number, isWrite: boolean, len: number, data: bigint) => bigint;
export type VcpuEvent = { type: 'exit'; code: number } | { type: 'fatal'; message: string };

interface Thread { worker: Worker; ctl: Int32Array; mbox: Int32Array; mbox64: BigInt64Array; vcpu?: VcpuFd; ready: Promise<void> }

// A vCPU blocked in KVM_RUN leaves it only on a signal; the handler itself does nothing.
process.on('SIGUSR2', () => {});

export class VcpuThreads {
  private threads: Thread[] = [];
  mmio: MmioHandler = () => 0n;

  /** Spawns the threads now; they load their modules while the caller builds the VM. */
  constructor(count: number, serial: SharedArrayBuffer, serialFd: number, private onEvent: (e: VcpuEvent) => void) {
    for (let index = 0; index < count; index++) {
      const control = new SharedArrayBuffer(CTL_WORDS * 4), mailbox = new SharedArrayBuffer(MBOX_BYTES);
      const workerData: VcpuThreadData = { index, serialFd, control, mailbox, serial };
      const worker = new Worker(new URL('./vcpu-thread.js', import.meta.url), { workerData });
      const ready = new Promise<void>((resolve, reject) => {
        worker.once('error', reject);
        worker.on('message', (m: { type: string }) => { if (m.type === 'ready') resolve(); else this.message(m); });
      });
      this.threads.push({ worker, ctl: new Int32Array(control), mbox: new Int32Array(mailbox), mbox64: new BigInt64Array(mailbox), ready });
    }
  }

  get count(): number { return this.threads.length; }

  private message(m: { type: string; [k: string]: unknown }): void {
    if (m.type === 'mmio') this.serviceMmio();
    else if (m.type === 'exit' || m.type === 'fatal') this.onEvent(m as unknown as VcpuEvent);
  }

  /** Answers every vCPU waiting on an MMIO access. */
  private serviceMmio(): void {
    for (const t of this.threads) {
      if (Atomics.load(t.mbox, MBOX.state) !== MBOX.request) continue;
      const isWrite = t.mbox[MBOX.isWrite] !== 0;
      try {
        const v = this.mmio(Number(t.mbox64[MBOX.addr64]), isWrite, t.mbox[MBOX.len], t.mbox64[MBOX.data64]);
        if (!isWrite) t.mbox64[MBOX.data64] = BigInt.asIntN(64, v);
      } catch (e) {
        this.onEvent({ type: 'fatal', message: `MMIO: ${(e as Error).message}` });
      }
      Atomics.store(t.mbox, MBOX.state, MBOX.done);
      Atomics.notify(t.mbox, MBOX.state);
    }
  }

  /** Hands each thread its vCPU and lets it run (or stay paused if `paused`). */
  async start(vcpus: VcpuFd[], common: Omit<VcpuStart, 'vcpuFd' | 'runAddr' | 'runSize'>, runSize: number, paused = false): Promise<void> {
    await Promise.all(this.threads.map((t) => t.ready));
    this.threads.forEach((t, i) => {
      t.vcpu = vcpus[i];
      Atomics.store(t.ctl, CTL.request, paused ? REQ.pause : REQ.run);
      const start: VcpuStart = { ...common, vcpuFd: vcpus[i].fd, runAddr: vcpus[i].runAddr, runSize };
      t.worker.postMessage(start);
    });
    // Wait until each thread has recorded its tid (needed to signal it).
    for (const t of this.threads) this.waitState(t, (s) => s !== STATE.starting);
  }

  private waitState(t: Thread, ok: (s: number) => boolean, timeoutMs = 5000): void {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = Atomics.load(t.ctl, CTL.state);
      if (ok(s)) return;
      if (Date.now() > deadline) throw new Error(`vCPU thread did not respond within ${timeoutMs} ms (state ${s})`);
      this.serviceMmio(); // a vCPU stuck in an MMIO round trip can only finish it if we answer
      Atomics.wait(t.ctl, CTL.state, s, 1);
    }
  }

  /** Stops every vCPU outside KVM_RUN; returns when all are parked. Synchronous on purpose. */
  pause(): void {
    for (const t of this.threads) {
      Atomics.store(t.ctl, CTL.request, REQ.pause);
      if (!t.vcpu || Atomics.load(t.ctl, CTL.state) !== STATE.running) continue;
      t.vcpu.run[RUN.immediateExit] = 1;
      tgkill(process.pid, Atomics.load(t.ctl, CTL.tid), SIGUSR2);
    }
    for (const t of this.threads) this.waitState(t, (s) => s === STATE.paused || s === STATE.stopped);
  }

  resume(): void {
    for (const t of this.threads) {
      Atomics.store(t.ctl, CTL.request, REQ.run);
      Atomics.notify(t.ctl, CTL.request);
    }
  }

  async stop(): Promise<void> {
    for (const t of this.threads) {
      Atomics.store(t.ctl, CTL.request, REQ.stop);
      Atomics.notify(t.ctl, CTL.request);
      if (t.vcpu && Atomics.load(t.ctl, CTL.state) === STATE.running) {
        t.vcpu.run[RUN.immediateExit] = 1;
        try { tgkill(process.pid, Atomics.load(t.ctl, CTL.tid), SIGUSR2); } catch { /* thread already gone */ }
      }
    }
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}
