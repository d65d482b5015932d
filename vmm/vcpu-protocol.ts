// Shared-memory protocol between the main thread and the vCPU threads.

/** Int32 slots of a vCPU's control SharedArrayBuffer. */
export const CTL = { request: 0, state: 1, tid: 2 } as const;
export const CTL_WORDS = 4;
export const REQ = { run: 0, pause: 1, stop: 2 } as const;
export const STATE = { starting: 0, running: 1, paused: 2, stopped: 3 } as const;

/** MMIO mailbox: Int32 slots, and BigInt64 slots for the address and data. */
export const MBOX = { state: 0, isWrite: 1, len: 2, addr64: 1, data64: 2, idle: 0, request: 1, done: 2 } as const;
export const MBOX_BYTES = 24;

export interface VcpuThreadData {
  index: number;
  serialFd: number;
  control: SharedArrayBuffer;
  mailbox: SharedArrayBuffer;
  serial: SharedArrayBuffer;
}

/** Sent once the vCPU exists: threads are started early, before the VM is built (restore overlaps). */
export interface VcpuStart {
  vcpuFd: number; runAddr: number; runSize: number; vmFd: number;
  ram: { gpa: number; size: number; hostAddr: number }[];
}
