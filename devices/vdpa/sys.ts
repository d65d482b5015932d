// System calls the device daemon needs beyond src/libc.ts: epoll, raw-pointer read/write,
// scatter/gather process_vm_readv/writev and pread/pwrite. Same conventions as src/libc.ts:
// a failure throws SyscallError naming the call and the errno. Pointers are passed as numbers
// (addresses of Buffers from addressOf, or of mappings) so that big Buffers are never marshalled.
import ffi from '../../src/ffi.js';
import { SyscallError, addressOf, sys } from '../../src/libc.js';

const { DataType: T } = ffi;
ffi.open({ library: 'libc', path: '' });

interface Raw { value: number; errnoCode: number; errnoMessage: string }

/** Like sys() but returns -errno instead of throwing (hot paths that expect EAGAIN). */
function sysNoThrow(funcName: string, paramsType: ffi.DataType[], paramsValue: unknown[], retType: ffi.DataType = T.I64): number {
  const r = ffi.load({ library: 'libc', funcName, retType, paramsType, paramsValue, errno: true }) as unknown as Raw;
  return r.value === -1 ? -r.errnoCode : r.value;
}

export const EPOLLIN = 0x1, EPOLLET = 1 << 31, EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2, EPOLL_CLOEXEC = 0o2000000;
export const EAGAIN = 11, EINTR = 4, ENOENT = 2, ENODEV = 19;

export const epollCreate = (): number => sys('epoll_create1', 'epoll_create1', [T.I32], [EPOLL_CLOEXEC], T.I32);

export function epollDel(epfd: number, fd: number): void {
  const ev = Buffer.alloc(12);
  sysNoThrow('epoll_ctl', [T.I32, T.I32, T.I32, T.U8Array], [epfd, EPOLL_CTL_DEL, fd, ev], T.I32);
}

const evBuf = Buffer.alloc(12 * 64);
const evAddr = addressOf(evBuf);
/** Wait for events; returns the tokens that fired (empty on EINTR or timeout). */
export function epollWait(epfd: number, timeoutMs: number): number[] {
  const n = sysNoThrow('epoll_wait', [T.I32, T.U64, T.I32, T.I32], [epfd, evAddr, 64, timeoutMs], T.I32);
  if (n === -EINTR) return [];
  if (n < 0) throw new SyscallError('epoll_wait', -n);
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(Number(evBuf.readBigUInt64LE(12 * i + 4)));
  return out;
}

/** read(2) into raw memory; returns bytes or -errno. */
export const readRaw = (fd: number, addr: number, len: number): number =>
  sysNoThrow('read', [T.I32, T.U64, T.U64], [fd, addr, len]);
/** write(2) from raw memory; returns bytes or -errno. */
export const writeRaw = (fd: number, addr: number, len: number): number =>
  sysNoThrow('write', [T.I32, T.U64, T.U64], [fd, addr, len]);
/** pread(2)/pwrite(2) through raw memory; return bytes or -errno. */
export const preadRaw = (fd: number, addr: number, len: number, off: number): number =>
  sysNoThrow('pread64', [T.I32, T.U64, T.U64, T.I64], [fd, addr, len, off]);
export const pwriteRaw = (fd: number, addr: number, len: number, off: number): number =>
  sysNoThrow('pwrite64', [T.I32, T.U64, T.U64, T.I64], [fd, addr, len, off]);

const SYS_process_vm_readv = 310, SYS_process_vm_writev = 311;
/** One remote range paired with local raw memory. */
export interface Iov { local: number; remote: number; len: number }

/**
 * process_vm_readv/writev over many ranges in one call (scatter/gather); returns bytes moved
 * or -errno. The kernel stops at the first remote fault, so a short count means a fault.
 */
const IOV_MAX = 1024;
const iovL = Buffer.alloc(16 * IOV_MAX), iovR = Buffer.alloc(16 * IOV_MAX);
const iovLAddr = addressOf(iovL), iovRAddr = addressOf(iovR);
export function processVmv(write: boolean, pid: number, iovs: Iov[]): number {
  let total = 0, done = 0;
  while (done < iovs.length) {
    const chunk = iovs.slice(done, done + IOV_MAX);
    const l = iovL, r = iovR;
    let want = 0;
    chunk.forEach((v, i) => {
      l.writeBigUInt64LE(BigInt(v.local), 16 * i); l.writeBigUInt64LE(BigInt(v.len), 16 * i + 8);
      r.writeBigUInt64LE(BigInt(v.remote), 16 * i); r.writeBigUInt64LE(BigInt(v.len), 16 * i + 8);
      want += v.len;
    });
    const n = sysNoThrow('syscall', [T.I64, T.I64, T.U64, T.I64, T.U64, T.I64, T.I64],
      [write ? SYS_process_vm_writev : SYS_process_vm_readv, pid, iovLAddr, chunk.length, iovRAddr, chunk.length, 0]);
    if (n < 0) return done === 0 ? n : total;
    total += n;
    if (n !== want) return total;
    done += chunk.length;
  }
  return total;
}

/** getrlimit-free sleep for the worker (Atomics.wait on a private word). */
const sleepWord = new Int32Array(new SharedArrayBuffer(4));
export const sleepMs = (ms: number): void => { if (ms > 0) Atomics.wait(sleepWord, 0, 0, ms); };

/** epoll_ctl(ADD) with explicit event flags (EPOLLIN 1, EPOLLET 1<<31). */
export function epollAddFlags(epfd: number, fd: number, token: number, events: number): void {
  const ev = Buffer.alloc(12);
  ev.writeUInt32LE(events >>> 0, 0);
  ev.writeBigUInt64LE(BigInt(token >>> 0), 4);
  sys('epoll_ctl(ADD)', 'epoll_ctl', [T.I32, T.I32, T.I32, T.U8Array], [epfd, EPOLL_CTL_ADD, fd, ev], T.I32);
}

/** f_type of the file system an fd lives on (fstatfs; struct statfs starts with a long f_type). */
export function fsMagic(fd: number): number {
  const st = Buffer.alloc(120);
  sys('fstatfs', 'fstatfs', [T.I32, T.U8Array], [fd, st], T.I32);
  return Number(st.readBigInt64LE(0));
}
