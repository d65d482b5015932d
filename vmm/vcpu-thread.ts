// One vCPU: a worker thread looping on a blocking KVM_RUN. Port I/O for the UART and the exit port
// is handled here; MMIO goes to the main thread through a shared mailbox. The main thread pauses
// the loop by setting kvm_run.immediate_exit and signalling this thread (see vcpus.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { writeSync } from 'node:fs';
import ffi from 'ffi-rs';
import { bufferAt, gettid, errnoName } from '../src/libc.js';
import { KVM, EXIT, RUN, exitName, VmFd, decodeRegs, SREGS, SIZE } from '../src/kvm.js';
import { translate } from '../src/memory.js';
import { Serial, COM1_BASE, COM1_IRQ, EXIT_PORT } from '../devices/serial.js';
import { CTL, REQ, STATE, MBOX, type VcpuThreadData, type VcpuStart } from './vcpu-protocol.js';

const data = workerData as VcpuThreadData;
const port = parentPort!;
const ctl = new Int32Array(data.control);
const mbox = new Int32Array(data.mailbox);
const mbox64 = new BigInt64Array(data.mailbox);
let vm: VmFd;
let ram: VcpuStart['ram'] = [];
const serial = new Serial(data.serial, (byte) => writeSync(data.serialFd, Buffer.of(byte)), (level) => vm.irqLine(COM1_IRQ, level));

const { DataType: T } = ffi;
function kvmRun(fd: number): number {
  const r = ffi.load({ library: 'libc', funcName: 'ioctl', retType: T.I32, paramsType: [T.I32, T.U64, T.U64], paramsValue: [fd, KVM.RUN, 0], errno: true }) as unknown as { value: number; errnoCode: number };
  return r.value === -1 ? -r.errnoCode : 0;
}
const EINTR = 4, EAGAIN = 11;

/** Parks the thread while the main thread asks for a pause; returns false when told to stop. */
function park(run: Buffer): boolean {
  run[RUN.immediateExit] = 0;
  Atomics.store(ctl, CTL.state, STATE.paused);
  Atomics.notify(ctl, CTL.state);
  let req: number;
  while ((req = Atomics.load(ctl, CTL.request)) === REQ.pause) Atomics.wait(ctl, CTL.request, REQ.pause);
  if (req === REQ.stop) { Atomics.store(ctl, CTL.state, STATE.stopped); Atomics.notify(ctl, CTL.state); return false; }
  Atomics.store(ctl, CTL.state, STATE.running);
  Atomics.notify(ctl, CTL.state);
  return true;
}

function ramRead64(gpa: number): bigint {
  for (const r of ram) if (gpa >= r.gpa && gpa + 8 <= r.gpa + r.size) return bufferAt(r.hostAddr + gpa - r.gpa, 8).readBigUInt64LE();
  return 0n;
}

/** "guest RIP 0x… bytes 0f 38 …" for an emulation failure report. */
function describeRip(fd: number): string {
  const regsBuf = Buffer.alloc(SIZE.regs), sregs = Buffer.alloc(SIZE.sregs);
  ffi.load({ library: 'libc', funcName: 'ioctl', retType: T.I32, paramsType: [T.I32, T.U64, T.U8Array], paramsValue: [fd, KVM.GET_REGS, regsBuf] });
  ffi.load({ library: 'libc', funcName: 'ioctl', retType: T.I32, paramsType: [T.I32, T.U64, T.U8Array], paramsValue: [fd, KVM.GET_SREGS, sregs] });
  const rip = decodeRegs(regsBuf).rip;
  const cr3 = sregs.readBigUInt64LE(SREGS.cr3);
  const paging = (sregs.readBigUInt64LE(SREGS.cr0) & 0x80000000n) !== 0n;
  const gpa = paging ? translate(ramRead64, cr3, rip) : Number(rip);
  let bytes = 'unreadable';
  if (gpa !== null) {
    const b = Buffer.alloc(15);
    for (let i = 0; i < 15; i++) b[i] = Number((ramRead64(gpa + i) & 0xffn));
    bytes = [...b].map((x) => x.toString(16).padStart(2, '0')).join(' ');
  }
  return `guest RIP 0x${rip.toString(16)}, instruction bytes ${bytes}`;
}

function handleIo(run: Buffer): boolean {
  const dir = run[RUN.io.direction], size = run[RUN.io.size], portNum = run.readUInt16LE(RUN.io.port);
  const count = run.readUInt32LE(RUN.io.count), off = Number(run.readBigUInt64LE(RUN.io.dataOffset));
  for (let i = 0; i < count; i++) {
    const at = off + i * size;
    if (portNum >= COM1_BASE && portNum < COM1_BASE + 8) {
      if (dir === 1) serial.write(portNum - COM1_BASE, run[at]);
      else run[at] = serial.read(portNum - COM1_BASE);
    } else if (portNum === EXIT_PORT && dir === 1) {
      const value = size === 4 ? run.readUInt32LE(at) : size === 2 ? run.readUInt16LE(at) : run[at];
      port.postMessage({ type: 'exit', code: value & 0xff });
      return false;
    } else if (dir === 0) {
      run.fill(0xff, at, at + size); // nothing there: a floating bus reads all ones
    }
  }
  return true;
}

function handleMmio(run: Buffer): void {
  const isWrite = run[RUN.mmio.isWrite], len = run.readUInt32LE(RUN.mmio.len);
  mbox64[MBOX.addr64] = run.readBigUInt64LE(RUN.mmio.physAddr);
  mbox64[MBOX.data64] = run.readBigUInt64LE(RUN.mmio.data);
  mbox[MBOX.isWrite] = isWrite; mbox[MBOX.len] = len;
  Atomics.store(mbox, MBOX.state, MBOX.request);
  port.postMessage({ type: 'mmio', index: data.index });
  while (Atomics.load(mbox, MBOX.state) === MBOX.request) Atomics.wait(mbox, MBOX.state, MBOX.request);
  if (!isWrite) run.writeBigUInt64LE(BigInt.asUintN(64, mbox64[MBOX.data64]), RUN.mmio.data);
  Atomics.store(mbox, MBOX.state, MBOX.idle);
}

function loop(start: VcpuStart): void {
  vm = new VmFd(start.vmFd);
  ram = start.ram;
  const run = bufferAt(start.runAddr, start.runSize);
  const fd = start.vcpuFd;
  Atomics.store(ctl, CTL.tid, gettid());
  Atomics.store(ctl, CTL.state, STATE.running);
  Atomics.notify(ctl, CTL.state);
  for (;;) {
    if (Atomics.load(ctl, CTL.request) !== REQ.run) { if (!park(run)) return; continue; }
    const err = kvmRun(fd);
    if (err === -EINTR || err === -EAGAIN) continue;
    if (err < 0) { port.postMessage({ type: 'fatal', message: `KVM_RUN failed: ${errnoName(-err)}` }); return; }
    const reason = run.readUInt32LE(RUN.exitReason);
    switch (reason) {
      case EXIT.IO: if (!handleIo(run)) return; break;
      case EXIT.MMIO: handleMmio(run); break;
      case EXIT.INTR: break;
      case EXIT.HLT: Atomics.wait(ctl, CTL.request, REQ.run, 10); break;
      case EXIT.INTERNAL_ERROR:
        port.postMessage({ type: 'fatal', message: `guest emulation failure (KVM_EXIT_INTERNAL_ERROR, suberror ${run.readUInt32LE(RUN.internal.suberror)}) on vCPU ${data.index}: ${describeRip(fd)}` });
        return;
      case EXIT.SHUTDOWN:
        port.postMessage({ type: 'fatal', message: `guest shut down (triple fault) on vCPU ${data.index}: ${describeRip(fd)}` });
        return;
      case EXIT.FAIL_ENTRY:
        port.postMessage({ type: 'fatal', message: `KVM_EXIT_FAIL_ENTRY on vCPU ${data.index}: reason 0x${run.readBigUInt64LE(RUN.failEntry.reason).toString(16)}` });
        return;
      case EXIT.SYSTEM_EVENT:
        port.postMessage({ type: 'exit', code: 0 });
        return;
      default:
        port.postMessage({ type: 'fatal', message: `unexpected KVM exit ${exitName(reason)} on vCPU ${data.index}` });
        return;
    }
  }
}

port.once('message', (start: VcpuStart) => {
  try { loop(start); } catch (e) { port.postMessage({ type: 'fatal', message: `vCPU ${data.index}: ${(e as Error).message}` }); }
  // However the loop ended, a pause must not wait for this thread.
  Atomics.store(ctl, CTL.state, STATE.stopped);
  Atomics.notify(ctl, CTL.state);
});
port.postMessage({ type: 'ready' });
