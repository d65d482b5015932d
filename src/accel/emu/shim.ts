// Bindings to the emu accelerator's C shim (shim.c, built into dist/emu/ by tools/emu/setup.mjs),
// loaded through ffi-rs like every other native call. The exit record and the register block are
// the shim's own memory, read and written through Buffers (no copies).
import ffi from '../../ffi.js';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bufferAt } from '../../libc.js';

const { DataType: T } = ffi;
const LIB = 'minivmm-emu';
export const SHIM_FILE = 'dist/emu/libminivmm-emu.so';
export const INSTALL_HINT = 'run `sudo apt-get install libunicorn2 libunicorn-dev && npm run build`';

/** Exit kinds (enum exit_kind). */
export const EXIT = { IO: 1, MMIO: 2, EVENT: 3, WINDOW: 4, EXCEPTION: 5, INTERRUPTED: 6, FATAL: 7 } as const;
export const EXC = { SOFT: 1, ERROR_CODE: 2 } as const;

/** struct emu_shared. */
export const SH = {
  size: 240, kind: 0, accessSize: 4, write: 8, flags: 12, addr: 16, data: 24, rip: 32, vector: 40, errorCode: 44,
  cr2: 48, insnLen: 56, ucError: 60, gsiEdges: 64, halted: 68, insn: 72, message: 88, immediateExit: 216,
  irqPending: 220, deadlineNs: 224, timerFired: 232,
} as const;

/** struct emu_regs. */
export const RG = {
  size: 816, gpr: 0, cr0: 144, cr2: 152, cr3: 160, cr4: 168, cr8: 176, efer: 184, fsBase: 192, gsBase: 200,
  kernelGsBase: 208, sel: 216, gdt: 232, idt: 248, tr: 264, ldt: 288, apicBase: 312, tsc: 320, fcw: 328, fsw: 330,
  ftw: 332, fop: 334, mxcsr: 336, fip: 344, fdp: 352, st: 360, xmm: 488, msr: 744,
} as const;
/** The MSRs in emu_regs.msr, in order. */
export const STATE_MSRS = [0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0x174, 0x175, 0x176, 0x277, 0xc0000103] as const;
export const REGS = { GPR: 1, SYS: 2, FPU: 4, MSR: 8, TSC: 16, ALL: 31 } as const;

let loaded: string | null | undefined;

function shimPath(): string | null {
  if (process.env.MINIVMM_EMU_SHIM) return process.env.MINIVMM_EMU_SHIM;
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const p = join(dir, SHIM_FILE);
    if (existsSync(p)) return p;
    if (dirname(dir) === dir) return null;
  }
}

const call = (funcName: string, retType: ffi.DataType, paramsType: ffi.DataType[], paramsValue: unknown[]): number =>
  ffi.load({ library: LIB, funcName, retType, paramsType, paramsValue }) as unknown as number;

/** The shim's last error (one line). */
export const lastError = (): string => ffi.load({ library: LIB, funcName: 'emu_last_error', retType: T.String, paramsType: [], paramsValue: [] }) as unknown as string;

/**
 * Loads the shim and runs its self-test once per process. Returns null, or why the emu
 * accelerator cannot be used here (one line, saying how to fix it).
 */
export function loadShim(): string | null {
  if (loaded !== undefined) return loaded;
  const path = shimPath();
  if (!path) return (loaded = `libunicorn was not found when minivmm was built (no ${SHIM_FILE}); ${INSTALL_HINT}`);
  try {
    ffi.open({ library: LIB, path });
  } catch (e) {
    const msg = (e as Error).message || 'dlopen failed';
    return (loaded = /libunicorn/.test(msg)
      ? `libunicorn.so.2 cannot be loaded (${msg.split('\n')[0]}); ${INSTALL_HINT}`
      : `cannot load ${path}: ${msg.split('\n')[0]}`);
  }
  if (call('emu_layout', T.U32, [T.U32], [0]) !== SH.size || call('emu_layout', T.U32, [T.U32], [1]) !== RG.size ||
      call('emu_layout', T.U32, [T.U32], [2]) !== SH.immediateExit || call('emu_layout', T.U32, [T.U32], [3]) !== RG.msr) {
    return (loaded = `${path} does not match this build (rebuild with npm run build)`);
  }
  if (call('emu_init', T.I32, [], []) !== 0) return (loaded = lastError());
  return (loaded = null);
}

/** Unicorn's version as [major, minor]. */
export function unicornVersion(): [number, number] {
  const v = call('emu_unicorn_version', T.U32, [], []);
  return [v >>> 24, (v >>> 16) & 0xff];
}

let khz: number | undefined;
/**
 * The host TSC rate in kHz (the guest's TSC is the host's plus an offset): the kernel's own figure
 * (/proc/cpuinfo, what KVM_GET_TSC_KHZ reports) when it agrees with a measurement to 0.1%, else
 * the measurement (on hosts where "cpu MHz" follows frequency scaling).
 */
export function tscKhz(): number {
  if (khz !== undefined) return khz;
  const measured = call('emu_tsc_khz', T.U32, [], []);
  let kernel = NaN;
  try { kernel = Math.round(Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]) * 1000); } catch { /* no /proc */ }
  return (khz = Math.abs(kernel - measured) <= measured / 1000 ? kernel : measured);
}

/** One emulated CPU (struct vcpu*). Its calls are synchronous except run(). */
export class ShimVcpu {
  readonly ptr: number;
  /** The exit record (struct emu_shared), aliasing the shim's memory. */
  readonly shared: Buffer;
  private readonly regsBuf = Buffer.alloc(RG.size);

  constructor() {
    const ptr = call('emu_vcpu_create', T.U64, [], []);
    if (!ptr) throw new Error(`emu: cannot create a vCPU: ${lastError()}`);
    this.ptr = ptr;
    this.shared = bufferAt(call('emu_shared', T.U64, [T.U64], [ptr]), SH.size);
  }

  private check(what: string, rc: number): void {
    if (rc < 0) throw new Error(`emu: ${what}: ${rc === -1 ? lastError() : `errno ${-rc}`}`);
  }

  mapRam(gpa: number, size: number, host: number): void {
    this.check('mapping RAM', call('emu_map_ram', T.I32, [T.U64, T.U64, T.U64, T.U64], [this.ptr, gpa, size, host]));
  }
  mapMmio(gpa: number, size: number): void {
    this.check('mapping MMIO', call('emu_map_mmio', T.I32, [T.U64, T.U64, T.U64], [this.ptr, gpa, size]));
  }
  irqfd(fd: number, gsi: number, assign: boolean): void {
    this.check('irqfd', call('emu_irqfd', T.I32, [T.U64, T.I32, T.U32, T.I32], [this.ptr, fd, gsi, assign ? 1 : 0]));
  }
  ioeventfd(fd: number, addr: number, len: number, pio: boolean, datamatch: number | undefined, assign: boolean): void {
    this.check('ioeventfd', call('emu_ioeventfd', T.I32, [T.U64, T.I32, T.U64, T.U32, T.I32, T.I32, T.U64, T.I32],
      [this.ptr, fd, addr, len, pio ? 1 : 0, datamatch === undefined ? 0 : 1, datamatch ?? 0, assign ? 1 : 0]));
  }

  /** Runs on a libuv pool thread until the next exit; resolves with its kind (EXIT). */
  run(): Promise<number> {
    return ffi.load({ library: LIB, funcName: 'emu_run', retType: T.I32, paramsType: [T.U64], paramsValue: [this.ptr], runInNewThread: true }) as unknown as Promise<number>;
  }
  /** Wakes a run() in progress (an immediate exit was requested, or an interrupt is pending). */
  kick(): void { call('emu_kick', T.Void, [T.U64], [this.ptr]); }

  /** The registers (struct emu_regs); the Buffer is reused by the next call. */
  getRegs(): Buffer {
    this.check('reading registers', call('emu_get_regs', T.I32, [T.U64, T.U8Array], [this.ptr, this.regsBuf]));
    return this.regsBuf;
  }
  setRegs(regs: Buffer, which: number): void {
    this.check('writing registers', call('emu_set_regs', T.I32, [T.U64, T.U8Array, T.U32], [this.ptr, regs, which]));
  }
  /** Guest-virtual memory (the bytes at RIP), zeros where unreadable. */
  readVirt(va: bigint, len: number): Buffer {
    const b = Buffer.alloc(len);
    call('emu_read_virt', T.I32, [T.U64, T.U64, T.U8Array, T.U32], [this.ptr, Number(va), b, len]);
    return b;
  }
  setCounting(on: boolean): void {
    this.check('instruction counting', call('emu_set_counting', T.I32, [T.U64, T.I32], [this.ptr, on ? 1 : 0]));
  }
  instructions(): bigint {
    return BigInt(call('emu_instructions', T.U64, [T.U64], [this.ptr]));
  }
  /** How often a running guest is stopped and looked at (0: the default, 10 ms). */
  setSlice(ns: number): void { call('emu_set_slice', T.Void, [T.U64, T.U64], [this.ptr, ns]); }
  destroy(): void { call('emu_vcpu_destroy', T.Void, [T.U64], [this.ptr]); }
}
