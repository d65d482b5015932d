// Thin, typed bindings to the libc calls minivmm needs, through ffi-rs.
// Every failure throws SyscallError naming the call and the errno, e.g.
// "KVM_CREATE_VM failed: EACCES (Permission denied)".
import ffi from './ffi.js';
import { constants } from 'node:os';
import { existsSync, readFileSync } from 'node:fs';

const { DataType: T } = ffi;
ffi.open({ library: 'libc', path: '' });

const errnoNames = new Map<number, string>();
for (const [name, num] of Object.entries(constants.errno)) {
  if (!errnoNames.has(num)) errnoNames.set(num, name);
}
// Where two names share a number, the kernel's own spelling (vhost returns EOPNOTSUPP).
for (const name of ['EOPNOTSUPP', 'EAGAIN', 'EDEADLK'] as const) {
  const num = (constants.errno as Record<string, number>)[name];
  if (num !== undefined) errnoNames.set(num, name);
}
export const errnoName = (errno: number): string => errnoNames.get(errno) ?? `errno ${errno}`;

export class SyscallError extends Error {
  readonly code: string;
  constructor(readonly call: string, readonly errno: number, description?: string) {
    const code = errnoName(errno);
    const text = (description ?? '').replace(/ \(os error \d+\)$/, '');
    super(`${call} failed: ${code}${text ? ` (${text})` : ''}`);
    this.code = code;
  }
}

type Param = ffi.DataType;
interface Raw { value: number; errnoCode: number; errnoMessage: string }

/**
 * Call a libc function that returns -1 and sets errno on failure. `label` names it in errors.
 * int-returning functions must be read as I32: the upper half of rax is not defined for them.
 */
export function sys(label: string, funcName: string, paramsType: Param[], paramsValue: unknown[], retType: Param = funcName === 'syscall' ? T.I64 : T.I32): number {
  let r: Raw;
  try {
    r = ffi.load({ library: 'libc', funcName, retType, paramsType, paramsValue, errno: true }) as unknown as Raw;
  } catch (e) {
    // ffi-rs throws an empty-message error on a wrong argument type: say which call.
    throw new Error(`${label}: bad arguments (${(e as Error).message || 'type mismatch'})`);
  }
  if (r.value === -1) throw new SyscallError(label, r.errnoCode, r.errnoMessage);
  return r.value;
}

/** A libc call that cannot fail (or whose failure we don't care about). */
function plain(funcName: string, paramsType: Param[], paramsValue: unknown[], retType: Param = T.I64): number {
  return ffi.load({ library: 'libc', funcName, retType, paramsType, paramsValue }) as unknown as number;
}

// ---- constants (x86-64) ----
export const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CREAT = 0o100, O_EXCL = 0o200,
  O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000, O_DIRECT = 0o40000;
export const PROT_READ = 1, PROT_WRITE = 2;
export const MAP_SHARED = 1, MAP_PRIVATE = 2, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
export const MFD_CLOEXEC = 1, MFD_ALLOW_SEALING = 2;
export const F_GETFD = 1, F_SETFD = 2, F_GETFL = 3, F_SETFL = 4, FD_CLOEXEC = 1, F_ADD_SEALS = 1033, F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1, F_SEAL_SHRINK = 2, F_SEAL_GROW = 4, F_SEAL_WRITE = 8;
export const EFD_CLOEXEC = 0o2000000, EFD_NONBLOCK = 0o4000;
export const SIGUSR2 = 12, SIGTERM = 15, SIGKILL = 9;
const SYS_tgkill = 234, SYS_pidfd_open = 434, SYS_pidfd_getfd = 438,
  SYS_memfd_create = 319, SYS_process_vm_readv = 310, SYS_process_vm_writev = 311, SYS_prlimit64 = 302;

// ---- files ----
export const open = (path: string, flags: number, mode = 0): number =>
  sys(`open(${path})`, 'open', [T.String, T.I32, T.I32], [path, flags, mode]);
export const close = (fd: number): void => { sys('close', 'close', [T.I32], [fd]); };
export const dup = (fd: number): number => sys('dup', 'dup', [T.I32], [fd]);
/** write(2) of a whole Buffer in one call (a vhost IOTLB message must be one write). */
export const write = (label: string, fd: number, buf: Buffer): number =>
  sys(label, 'write', [T.I32, T.U8Array, T.U64], [fd, buf, buf.length], T.I64);
export const read = (label: string, fd: number, buf: Buffer): number =>
  sys(label, 'read', [T.I32, T.U8Array, T.U64], [fd, buf, buf.length], T.I64);
export const POLLIN = 1, POLLOUT = 4;
/** poll(2) on one fd: true if `events` are ready within `timeoutMs` (EINTR counts as not yet). */
export function pollOne(fd: number, events: number, timeoutMs: number): boolean {
  const pfd = Buffer.alloc(8); pfd.writeInt32LE(fd, 0); pfd.writeInt16LE(events, 4);
  try { return sys('poll', 'poll', [T.U8Array, T.U64, T.I32], [pfd, 1, timeoutMs]) > 0; } catch (e) {
    if (e instanceof SyscallError && e.code === 'EINTR') return false;
    throw e;
  }
}
export const fcntl = (fd: number, cmd: number, arg = 0): number =>
  sys('fcntl', 'fcntl', [T.I32, T.I32, T.I64], [fd, cmd, arg]);
export const ftruncate = (fd: number, length: number): void => {
  sys('ftruncate', 'ftruncate', [T.I32, T.I64], [fd, length]);
};
export const memfdCreate = (name: string, flags: number): number =>
  sys('memfd_create', 'syscall', [T.I64, T.String, T.I64], [SYS_memfd_create, name, flags]);
export const eventfd = (initval: number, flags: number): number =>
  sys('eventfd', 'eventfd', [T.I32, T.I32], [initval, flags]);
export function setCloexec(fd: number, on: boolean): void {
  fcntl(fd, F_SETFD, on ? FD_CLOEXEC : 0);
}
export const isCloexec = (fd: number): boolean => (fcntl(fd, F_GETFD) & FD_CLOEXEC) !== 0;

// ---- ioctl ----
/** _IOC request numbers (include/uapi/asm-generic/ioctl.h): direction, type, number, argument size. */
export const IOC_NONE = 0, IOC_WRITE = 1, IOC_READ = 2;
export const ioc = (dir: number, type: number, nr: number, size: number): number => ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
/** _IO/_IOR/_IOW/_IOWR for one ioctl type (KVMIO, VHOST_VIRTIO). */
export const iocFamily = (type: number) => ({
  io: (nr: number) => ioc(IOC_NONE, type, nr, 0),
  ior: (nr: number, size: number) => ioc(IOC_READ, type, nr, size),
  iow: (nr: number, size: number) => ioc(IOC_WRITE, type, nr, size),
  iowr: (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, type, nr, size),
});
/** The parts of a request number. */
export const iocDir = (cmd: number): number => (cmd >>> 30) & 3;
export const iocSize = (cmd: number): number => (cmd >>> 16) & 0x3fff;
export const iocType = (cmd: number): number => (cmd >>> 8) & 0xff;
export const iocNr = (cmd: number): number => cmd & 0xff;
/** ioctl with an integer (or no) argument. `name` is the request's name for errors. */
export const ioctl = (name: string, fd: number, request: number, arg = 0): number =>
  sys(name, 'ioctl', [T.I32, T.U64, T.U64], [fd, request, arg]);
/** ioctl whose argument points at `buf`; the kernel reads/writes the Buffer in place. */
export const ioctlBuf = (name: string, fd: number, request: number, buf: Buffer): number =>
  sys(name, 'ioctl', [T.I32, T.U64, T.U8Array], [fd, request, buf]);

// ---- memory ----
export function mmap(len: number, prot: number, flags: number, fd: number, offset = 0, addr = 0): number {
  const r = ffi.load({
    library: 'libc', funcName: 'mmap', retType: T.U64, errno: true,
    paramsType: [T.U64, T.U64, T.I32, T.I32, T.I32, T.I64], paramsValue: [addr, len, prot, flags, fd, offset],
  }) as unknown as Raw;
  // MAP_FAILED is (void*)-1, which the U64 return type renders as 2^64-1 (rounded).
  if (r.value >= 2 ** 63) throw new SyscallError('mmap', r.errnoCode, r.errnoMessage);
  return r.value;
}
export const munmap = (addr: number, len: number): void => { sys('munmap', 'munmap', [T.U64, T.U64], [addr, len]); };
export const mlock = (addr: number, len: number): void => { sys('mlock', 'mlock', [T.U64, T.U64], [addr, len]); };
export const munlock = (addr: number, len: number): void => { sys('munlock', 'munlock', [T.U64, T.U64], [addr, len]); };

/** Address of a Buffer's bytes (memcpy returns its first argument). */
export const addressOf = (buf: Buffer): number =>
  plain('memcpy', [T.U8Array, T.U8Array, T.U64], [buf, buf, 0], T.U64);

/** A Buffer over raw memory at `addr` (no copy). The caller keeps the memory mapped. */
export function bufferAt(addr: number, length: number): Buffer {
  const ext = plain('memcpy', [T.U64, T.U64, T.U64], [addr, addr, 0], T.External) as unknown as ffi.JsExternal;
  return ffi.createExternalBuffer(ext, length);
}

// ---- processes, threads, signals ----
export const getpid = (): number => process.pid;
export const tgkill = (tgid: number, tid: number, sig: number): void => {
  sys('tgkill', 'syscall', [T.I64, T.I64, T.I64, T.I64], [SYS_tgkill, tgid, tid, sig]);
};
/** Reaps `pid` if it is an exited child of ours (WNOHANG); false if it is not (yet), or not ours. */
export function reapChild(pid: number): boolean {
  try { return sys('waitpid', 'waitpid', [T.I32, T.U64, T.I32], [pid, 0, 1 /* WNOHANG */]) === pid; } catch { return false; /* ECHILD: not (or no longer) our child */ }
}
/**
 * Reaps child `pid` once the kernel lets us, trying WNOHANG from a timer: a killed multithreaded
 * process shows as a zombie before waitpid can take it (its other threads are still exiting), so
 * one try can miss; and a blocking waitpid would hold a libuv pool thread, which the vCPUs' run
 * loops need. Resolves when reaped or gone (reaped elsewhere); rejects after `boundMs`.
 */
export function reapWhenExited(pid: number, boundMs = Infinity): Promise<void> {
  const done = (): boolean => reapChild(pid) || !existsSync(`/proc/${pid}`);
  if (done()) return Promise.resolve();
  const deadline = Date.now() + boundMs;
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (done()) { clearInterval(timer); resolve(); } else if (Date.now() > deadline) { clearInterval(timer); reject(new Error(`process ${pid} was not reaped within ${boundMs} ms`)); }
    }, 20);
    timer.unref();
  });
}
export const pidfdOpen = (pid: number): number =>
  sys('pidfd_open', 'syscall', [T.I64, T.I64, T.I64], [SYS_pidfd_open, pid, 0]);
export const pidfdGetfd = (pidfd: number, targetfd: number): number =>
  sys('pidfd_getfd', 'syscall', [T.I64, T.I64, T.I64, T.I64], [SYS_pidfd_getfd, pidfd, targetfd, 0]);

/** process_vm_readv/writev of one contiguous range; returns bytes moved. */
function processVm(write: boolean, pid: number, local: Buffer, remoteAddr: number): number {
  const iov = Buffer.alloc(32);
  iov.writeBigUInt64LE(BigInt(addressOf(local)), 0);
  iov.writeBigUInt64LE(BigInt(local.length), 8);
  iov.writeBigUInt64LE(BigInt(remoteAddr), 16);
  iov.writeBigUInt64LE(BigInt(local.length), 24);
  const liov = iov.subarray(0, 16), riov = iov.subarray(16);
  return sys(write ? 'process_vm_writev' : 'process_vm_readv', 'syscall',
    [T.I64, T.I64, T.U8Array, T.I64, T.U8Array, T.I64, T.I64],
    [write ? SYS_process_vm_writev : SYS_process_vm_readv, pid, liov, 1, riov, 1, 0]);
}
export const processVmRead = (pid: number, into: Buffer, remoteAddr: number): number => processVm(false, pid, into, remoteAddr);
export const processVmWrite = (pid: number, from: Buffer, remoteAddr: number): number => processVm(true, pid, from, remoteAddr);

export const RLIMIT_MEMLOCK = 8;
/** prlimit64 on `pid` (0 = self): returns [soft, hard] as bigints; sets them when `set` is given. */
export function prlimit(pid: number, resource: number, set?: [bigint, bigint]): [bigint, bigint] {
  const newBuf = Buffer.alloc(16), oldBuf = Buffer.alloc(16);
  if (set) { newBuf.writeBigUInt64LE(set[0], 0); newBuf.writeBigUInt64LE(set[1], 8); }
  sys('prlimit64', 'syscall', [T.I64, T.I64, T.I64, set ? T.U8Array : T.I64, T.U8Array],
    [SYS_prlimit64, pid, resource, set ? newBuf : 0, oldBuf]);
  return [oldBuf.readBigUInt64LE(0), oldBuf.readBigUInt64LE(8)];
}

/** A NUL-terminated char*[] for execve; keep the returned holder alive until the call. */
function cStringArray(items: string[]): { ptrs: Buffer; keep: Buffer[] } {
  const keep = items.map((s) => Buffer.from(`${s}\0`));
  const ptrs = Buffer.alloc(8 * (items.length + 1));
  keep.forEach((b, i) => ptrs.writeBigUInt64LE(BigInt(addressOf(b)), 8 * i));
  return { ptrs, keep };
}

/** execve(2). Only returns by throwing. */
export function execve(path: string, argv: string[], env: Record<string, string | undefined>): never {
  const a = cStringArray(argv);
  const e = cStringArray(Object.entries(env).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`));
  sys(`execve(${path})`, 'execve', [T.String, T.U8Array, T.U8Array], [path, a.ptrs, e.ptrs]);
  void a.keep; void e.keep;
  throw new Error('execve returned');
}

// ---- mounts ----
export const MNT_DETACH = 2;
export const mount = (source: string, target: string, fstype: string, flags: number, data: string): void => {
  sys(`mount(${target})`, 'mount', [T.String, T.String, T.String, T.U64, T.String], [source, target, fstype, flags, data]);
};
export const umount2 = (target: string, flags: number): void => {
  sys(`umount2(${target})`, 'umount2', [T.String, T.I32], [target, flags]);
};

// ---- UNIX sockets with fd passing (cpr-transfer) ----
export const AF_UNIX = 1, SOCK_STREAM = 1, SOCK_SEQPACKET = 5, SOCK_CLOEXEC = 0o2000000, SOL_SOCKET = 1, SCM_RIGHTS = 1,
  SO_PEERCRED = 17, SO_RCVTIMEO = 20, MSG_CMSG_CLOEXEC = 0x40000000;

function sockaddrUn(path: string): Buffer {
  const b = Buffer.alloc(110);
  b.writeUInt16LE(AF_UNIX, 0);
  if (Buffer.byteLength(path) > 107) throw new Error(`socket path too long: ${path}`);
  b.write(path, 2);
  return b;
}
export const socket = (type: number): number => sys('socket', 'socket', [T.I32, T.I32, T.I32], [AF_UNIX, type | SOCK_CLOEXEC, 0]);
export const bind = (fd: number, path: string): void => { sys(`bind(${path})`, 'bind', [T.I32, T.U8Array, T.I32], [fd, sockaddrUn(path), 110]); };
export const listen = (fd: number, backlog: number): void => { sys('listen', 'listen', [T.I32, T.I32], [fd, backlog]); };
export const connect = (fd: number, path: string): void => { sys(`connect(${path})`, 'connect', [T.I32, T.U8Array, T.I32], [fd, sockaddrUn(path), 110]); };
/** accept4 on a libuv pool thread, so the event loop goes on while we wait. */
export async function acceptAsync(fd: number): Promise<number> {
  const r = await (ffi.load({ library: 'libc', funcName: 'accept4', retType: T.I32, paramsType: [T.I32, T.U64, T.U64, T.I32], paramsValue: [fd, 0, 0, SOCK_CLOEXEC], errno: true, runInNewThread: true }) as unknown as Promise<Raw>);
  if (r.value === -1) throw new SyscallError('accept4', r.errnoCode, r.errnoMessage);
  return r.value;
}
/** A process's state letter from /proc/PID/stat (R, S, D, T, Z, X...), or null if there is no such process. */
function processState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] ?? null;
  } catch { return null; /* no /proc entry: no such process */ }
}

/** The process exists and is not a zombie (a dead child stays one until its parent reaps it). */
export const processAlive = (pid: number): boolean => { const s = processState(pid); return s !== null && s !== 'Z' && s !== 'X'; };

/** The credentials (struct ucred) of a connected UNIX socket's peer. */
export interface PeerCredentials { pid: number; uid: number; gid: number }
/**
 * SO_PEERCRED: for the side that connected, the credentials the listening process had when it
 * called listen(2) (not whoever holds the socket now). pid is 0 when the peer's pid is not
 * visible in our pid namespace.
 */
export function peerCredentials(fd: number): PeerCredentials {
  const cred = Buffer.alloc(12), len = Buffer.alloc(4);
  len.writeUInt32LE(12);
  sys('getsockopt(SO_PEERCRED)', 'getsockopt', [T.I32, T.I32, T.I32, T.U8Array, T.U8Array], [fd, SOL_SOCKET, SO_PEERCRED, cred, len]);
  return { pid: cred.readInt32LE(0), uid: cred.readUInt32LE(4), gid: cred.readUInt32LE(8) };
}
export function setRecvTimeout(fd: number, ms: number): void {
  const tv = Buffer.alloc(16);
  tv.writeBigInt64LE(BigInt(Math.floor(ms / 1000)), 0);
  tv.writeBigInt64LE(BigInt((ms % 1000) * 1000), 8);
  sys('setsockopt(SO_RCVTIMEO)', 'setsockopt', [T.I32, T.I32, T.I32, T.U8Array, T.I32], [fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16]);
}

/** One sendmsg(2): `data` plus `fds` as SCM_RIGHTS. */
export function sendWithFds(fd: number, data: Buffer, fds: number[]): void {
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(BigInt(addressOf(data)), 0); iov.writeBigUInt64LE(BigInt(data.length), 8);
  const space = fds.length ? 16 + Math.ceil((fds.length * 4) / 8) * 8 : 0;
  const control = Buffer.alloc(Math.max(space, 8));
  if (fds.length) {
    control.writeBigUInt64LE(BigInt(16 + fds.length * 4), 0);
    control.writeInt32LE(SOL_SOCKET, 8); control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => control.writeInt32LE(f, 16 + i * 4));
  }
  const msg = Buffer.alloc(56);
  msg.writeBigUInt64LE(BigInt(addressOf(iov)), 16); msg.writeBigUInt64LE(1n, 24);
  if (fds.length) { msg.writeBigUInt64LE(BigInt(addressOf(control)), 32); msg.writeBigUInt64LE(BigInt(space), 40); }
  const n = sys('sendmsg', 'sendmsg', [T.I32, T.U8Array, T.I32], [fd, msg, 0], T.I64);
  if (n !== data.length) throw new Error(`sendmsg sent ${n} of ${data.length} bytes`);
}

/** One recvmsg(2) of at most `max` bytes and up to `maxFds` fds (received close-on-exec). Async: a pool thread waits. */
export async function recvWithFds(fd: number, max: number, maxFds: number): Promise<{ data: Buffer; fds: number[] }> {
  const data = Buffer.alloc(max);
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(BigInt(addressOf(data)), 0); iov.writeBigUInt64LE(BigInt(max), 8);
  const space = 16 + Math.ceil((maxFds * 4) / 8) * 8;
  const control = Buffer.alloc(space);
  const msg = Buffer.alloc(56);
  msg.writeBigUInt64LE(BigInt(addressOf(iov)), 16); msg.writeBigUInt64LE(1n, 24);
  msg.writeBigUInt64LE(BigInt(addressOf(control)), 32); msg.writeBigUInt64LE(BigInt(space), 40);
  // The msghdr goes by address: the kernel updates it in place (controllen, flags), and an async
  // call must not work on a copy.
  const r = await (ffi.load({ library: 'libc', funcName: 'recvmsg', retType: T.I64, paramsType: [T.I32, T.U64, T.I32], paramsValue: [fd, addressOf(msg), MSG_CMSG_CLOEXEC], errno: true, runInNewThread: true }) as unknown as Promise<Raw>);
  void [data, iov, control]; // alive until here
  if (r.value === -1) throw new SyscallError('recvmsg', r.errnoCode, r.errnoMessage);
  const fds: number[] = [];
  const controllen = Number(msg.readBigUInt64LE(40));
  if (controllen >= 16 && control.readInt32LE(8) === SOL_SOCKET && control.readInt32LE(12) === SCM_RIGHTS) {
    const n = (Number(control.readBigUInt64LE(0)) - 16) / 4;
    for (let i = 0; i < n; i++) fds.push(control.readInt32LE(16 + i * 4));
  }
  if (msg.readInt32LE(48) & 0x8) throw new Error('recvmsg: control data truncated (MSG_CTRUNC)'); // fds were lost
  return { data: data.subarray(0, r.value), fds };
}
