// An Agent performs UAPI actions on behalf of one role (A, T, B, A'). Every action is an "op":
// a name and JSON arguments, run synchronously, answered by an Outcome ('ok' + value, or the errno
// name). The same op table serves the runner's own process, a worker thread, a child process and
// an exec'd image, so a case reads the same whichever role acts.
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import * as libc from '../../src/libc.js';
import { vhost, encodeIotlbMsg, IotlbMsg } from '../../src/vhost.js';
import * as vq from './virtq.js';

export type Outcome = { r: string; v?: unknown }; // r: 'ok' or an errno name ('EPERM', ...)
export type Op = [name: string, ...args: unknown[]];

// JSON with bigints, for every boundary (thread, child, exec).
export const enc = (v: unknown): string => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? { $b: x.toString() } : x));
export const dec = (s: string): any => JSON.parse(s, (_k, x) =>
  (x && typeof x === 'object' && typeof x.$b === 'string' && Object.keys(x).length === 1 ? BigInt(x.$b) : x));

/** Where pinned pages are read: /proc/PID/status VmPin, or the embedded daemon's status file. */
export type PinSource = { kind: 'proc' } | { kind: 'status'; path: string } | { kind: 'none' };

/**
 * VmPin of `pid` in KiB, exactly (the kernel prints an unsigned long: a count that went negative
 * reads as ~2^64), or null when the process has none (gone, or a kernel thread).
 */
export function vmPinKiB(pid: number): bigint | null {
  let text: string;
  try { text = readFileSync(`/proc/${pid}/status`, 'utf8'); } catch { return null; }
  const m = /^VmPin:\s+(\d+) kB/m.exec(text);
  return m ? BigInt(m[1]) : null;
}

/** A VmPin this large is a negative pinned_vm printed unsigned: the kernel's accounting underflowed. */
export const vmPinUnderflowed = (kib: bigint): boolean => kib >= 1n << 62n;

/** Thrown when VmPin shows an underflowed count (a kernel bug, reported as such). */
export class VmPinUnderflow extends Error {
  constructor(pid: number, kib: bigint) {
    super(`VmPin of process ${pid} reads ${kib} kB, i.e. ${kib - (1n << 64n)} kB: the kernel's pinned-page count went negative (a kernel accounting bug)`);
  }
}

/** Pinned memory of `pid` in KiB, or null when the source cannot tell. */
export function readPins(src: PinSource, pid: number): number | null {
  if (src.kind === 'proc') {
    const kib = vmPinKiB(pid);
    if (kib === null) return null;
    if (vmPinUnderflowed(kib)) throw new VmPinUnderflow(pid, kib);
    return Number(kib);
  }
  if (src.kind === 'status') return statusFilePins(src.path, pid);
  return null;
}

/**
 * Pinned KiB of `pid` from the embedded daemon's status file (next to the device node), whose
 * `vmPin` lists pinned pages per address space {pid, fingerprint, pages}. Read only for the
 * simulator's pinned-page figures (a simulated device cannot move the host's VmPin) and for the
 * PA/VA decision; never for a verdict on a real kernel. null when the file has no such figure.
 */
export function statusFilePins(path: string, pid: number): number | null {
  let j: { vmPin?: { pid: number; fingerprint?: string; pages: number }[] };
  try { j = JSON.parse(readFileSync(path, 'utf8')); } catch { return null; }
  if (!Array.isArray(j.vmPin)) return null;
  // An exec'd image has the pid of the old one: prefer the entry of this image's address space.
  const mine = j.vmPin.filter((e) => e.pid === pid);
  const fp = layoutFingerprint(pid);
  const exact = mine.filter((e) => e.fingerprint === fp);
  return 4 * (exact.length ? exact : mine).reduce((n, e) => n + e.pages, 0);
}

/**
 * The address-space layout of a process (start_code, start_stack, start_brk, arg_start, env_start
 * from /proc/PID/stat, hex, '-'-joined): what the embedded daemon keys its per-image figures by.
 */
function layoutFingerprint(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return [26, 28, 47, 48, 50].map((n) => Number(f[n - 3] ?? '0').toString(16)).join('-');
  } catch { return null; }
}

export interface AgentConfig { device: string; pins: PinSource; kind: vq.Kind; entry: string }

interface MemRegion { fd: number; size: number; addr: number; off: number }

/** What survives an exec (fds kept open, numbers only) and what is rebuilt from it. */
export interface ExecState { cfg: AgentConfig; fd: number | null; mem: Record<string, { fd: number; size: number }>; efds: Record<string, number>; reqId: number; ringIova: bigint }


export class Agent {
  fd: number | null = null;
  readonly mem = new Map<string, MemRegion>();
  readonly efds = new Map<string, number>();
  execd = false;
  constructor(readonly cfg: AgentConfig, state?: ExecState) {
    if (state) {
      this.fd = state.fd;
      for (const [k, m] of Object.entries(state.mem)) this.mem.set(k, { fd: m.fd, size: m.size, addr: 0, off: 0 });
      for (const [k, e] of Object.entries(state.efds)) this.efds.set(k, e);
      this.ringIova = state.ringIova;
      this.execd = true;
    }
  }

  run(op: Op): Outcome {
    const [name, ...args] = op;
    const f = (this.ops as Record<string, (...a: any[]) => unknown>)[name];
    if (!f) return { r: 'EHARNESS', v: `unknown op ${name}` };
    try {
      return { r: 'ok', v: f.apply(this, args) };
    } catch (e) {
      // e.code is the kernel's spelling where two names share a number (EOPNOTSUPP, EAGAIN): src/libc.ts errnoName
      if (e instanceof libc.SyscallError) return { r: e.code, v: e.message };
      // A kernel that broke its own accounting is a finding, not a harness bug: no stack for it.
      return { r: 'EHARNESS', v: e instanceof VmPinUnderflow ? e.message : (e as Error).stack ?? String(e) };
    }
  }

  private dev(): number { if (this.fd === null) throw new Error('device not open in this role'); return this.fd; }
  private region(name: string): MemRegion { const m = this.mem.get(name); if (!m) throw new Error(`no memory ${name}`); return m; }
  /** The mapped address of `name` + off (for IOTLB uaddr). */
  addr(name: string, off = 0): bigint { const m = this.region(name); if (!m.addr) throw new Error(`memory ${name} not mapped`); return BigInt(m.addr + off); }
  vring(): vq.Vring {
    const m = this.region('ring');
    if (!m.addr) throw new Error('ring memory not mapped');
    return { mem: libc.bufferAt(m.addr, vq.RING_MEM), iova: this.ringIova };
  }
  ringIova = 0n;
  private kicks(): number[] { return [0, 1].map((q) => this.efds.get(`kick${q}`) ?? -1); }
  private calls(): number[] { return [0, 1].map((q) => this.efds.get(`call${q}`) ?? -1); }

  readonly ops = {
    open(this: Agent, path?: string): number {
      this.fd = libc.open(path ?? this.cfg.device, libc.O_RDWR | libc.O_CLOEXEC); return this.fd;
    },
    /** Open the node, retrying EBUSY for up to `ms` (a FUSE release is asynchronous). */
    openSettled(this: Agent, ms = 2000): number {
      const end = Date.now() + ms;
      for (;;) {
        try { return this.ops.open.call(this); } catch (e) {
          if (!(e instanceof libc.SyscallError) || e.code !== 'EBUSY' || Date.now() > end) throw e;
          vq.sleepMs(10);
        }
      }
    },
    adopt(this: Agent, fd: number): void { this.fd = fd; },
    close(this: Agent): void { const fd = this.dev(); this.fd = null; libc.close(fd); },
    /** A typed wrapper from src/vhost.ts: vhost[name](fd, ...args). */
    v(this: Agent, name: keyof typeof vhost, ...args: unknown[]): unknown {
      return (vhost[name] as (...a: unknown[]) => unknown)(this.dev(), ...args);
    },
    /** A raw ioctl with an integer argument, or with a zeroed buffer of `bufLen` bytes. */
    ioctl(this: Agent, req: number, arg = 0, bufLen?: number): unknown {
      if (bufLen === undefined) return libc.ioctl(`ioctl 0x${req.toString(16)}`, this.dev(), req, arg);
      const b = Buffer.alloc(bufLen); libc.ioctlBuf(`ioctl 0x${req.toString(16)}`, this.dev(), req, b); return b.toString('hex');
    },
    /** One IOTLB message; uaddr may be {mem, off} naming this role's mapping. Returns write()'s result. */
    iotlb(this: Agent, m: Omit<IotlbMsg, 'uaddr'> & { uaddr?: bigint | { mem: string; off?: number } }): number {
      const u = m.uaddr;
      const uaddr = u === undefined ? 0n : typeof u === 'bigint' ? u : this.addr(u.mem, u.off ?? 0);
      return libc.write(`IOTLB write`, this.dev(), encodeIotlbMsg({ ...m, uaddr }));
    },
    /** write() of arbitrary bytes (hex). */
    writeRaw(this: Agent, hex: string): number { return libc.write('write', this.dev(), Buffer.from(hex, 'hex')); },
    /** A shared memfd of `size` bytes, mapped. */
    memfd(this: Agent, name: string, size: number): number {
      const fd = libc.memfdCreate(`conformance-${name}`, libc.MFD_CLOEXEC);
      libc.ftruncate(fd, size);
      const addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0);
      this.mem.set(name, { fd, size, addr, off: 0 });
      return addr;
    },
    /** Map memfd `name` (again) at a new address, read-only with `ro`; returns it. */
    map(this: Agent, name: string, ro = false): number {
      const m = this.region(name);
      m.addr = libc.mmap(m.size, ro ? libc.PROT_READ : libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, m.fd, 0);
      return m.addr;
    },
    unmap(this: Agent, name: string): void { const m = this.region(name); libc.munmap(m.addr, m.size); m.addr = 0; },
    /** Map memfd `name` as two separately mapped halves, the second half first (two VMAs). */
    mapHalvesSwapped(this: Agent, name: string): number {
      const m = this.region(name), h = m.size / 2;
      const base = libc.mmap(m.size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, m.fd, 0);
      libc.mmap(h, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_FIXED, m.fd, h, base);
      libc.mmap(h, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_FIXED, m.fd, 0, base + h);
      m.addr = base;
      return base;
    },
    /** Anonymous private memory. */
    anon(this: Agent, name: string, size: number): number {
      const addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS, -1, 0);
      libc.bufferAt(addr, size).fill(1);
      this.mem.set(name, { fd: -1, size, addr, off: 0 });
      return addr;
    },
    fill(this: Agent, name: string, off: number, hex: string): void { Buffer.from(hex, 'hex').copy(libc.bufferAt(Number(this.addr(name, off)), hex.length / 2)); },
    peek(this: Agent, name: string, off: number, len: number): string { return Buffer.from(libc.bufferAt(Number(this.addr(name, off)), len)).toString('hex'); },
    /** Pinned KiB of this process as the device accounts them (null: not observable). */
    pins(this: Agent): number | null { return readPins(this.cfg.pins, process.pid); },
    pid(): number { return process.pid; },
    /** Set (when given) and return the soft RLIMIT_MEMLOCK in bytes; the hard limit is kept so that it can be raised again. */
    memlock(this: Agent, bytes?: bigint): bigint {
      if (bytes !== undefined) libc.prlimit(0, libc.RLIMIT_MEMLOCK, [bytes, libc.prlimit(0, libc.RLIMIT_MEMLOCK)[1]]);
      return libc.prlimit(0, libc.RLIMIT_MEMLOCK)[0];
    },
    /** Non-blocking eventfds kick0/1, call0/1 (new ones replace old ones). */
    eventfds(this: Agent): void {
      for (const n of ['kick0', 'kick1', 'call0', 'call1']) this.efds.set(n, libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK));
    },
    /** Tell the agent at which IOVA the ring memfd is entered. */
    ringAt(this: Agent, iova: bigint): void { this.ringIova = iova; },
    /** Status walk to 0x0f, queues from `bases` (zeroed rings when fresh). */
    up(this: Agent, bases?: number[], fresh = false): void {
      const r = this.vring();
      if (fresh) vq.resetRings(r);
      vq.deviceUp(this.dev(), this.cfg.kind, r, this.kicks(), this.calls(), bases);
    },
    /** Re-point kick and call of every queue at this role's eventfds. */
    rewire(this: Agent): void {
      for (const q of vq.queuesOf(this.cfg.kind)) { vhost.setVringKick(this.dev(), q, this.kicks()[q]); vhost.setVringCall(this.dev(), q, this.calls()[q]); }
    },
    /** n round trips (frames or sectors); returns null or what went wrong. */
    traffic(this: Agent, from: number, count = 1): string | null {
      for (let n = from; n < from + count; n++) {
        const err = vq.roundTrip(this.cfg.kind, this.vring(), this.kicks(), this.calls(), n);
        if (err) return `request ${n}: ${err}`;
      }
      return null;
    },
    kickAll(this: Agent): void { for (const q of vq.queuesOf(this.cfg.kind)) vq.kick(this.kicks()[q]); },
    kick(this: Agent, q: number): void { vq.kick(this.kicks()[q]); },
    /** Post chains of ring-memory buffers on queue q (no kick); returns their heads. */
    post(this: Agent, q: number, chains: vq.Seg[][]): number[] { const r = this.vring(); return chains.map((segs) => vq.post(r, q, segs)); },
    /** Wait until queue q's used index is `target` (mod 2^16); returns whether it got there. */
    waitUsed(this: Agent, q: number, target: number, timeoutMs = 3000): boolean { return vq.waitUsed(this.vring(), q, target, timeoutMs); },
    /** Used element i (a running index) of queue q. */
    usedElem(this: Agent, q: number, i: number): { id: number; len: number } { return vq.usedElem(this.vring(), q, i); },
    /** Read (and so reset) queue q's call eventfd: how many times the device signalled. */
    drainCall(this: Agent, q: number): number { return vq.drain(this.calls()[q]); },
    /** open() of the node by a second fd, closed at once; returns the fd number it got. */
    tryOpen(this: Agent): number { const fd = libc.open(this.cfg.device, libc.O_RDWR | libc.O_CLOEXEC); libc.close(fd); return fd; },
    send(this: Agent, n: number): vq.Pending { return vq.send(this.cfg.kind, this.vring(), this.kicks(), n); },
    complete(this: Agent, p: vq.Pending, timeoutMs = 3000): string | null { return vq.complete(this.vring(), this.calls(), p, timeoutMs); },
    usedIdx(this: Agent): number[] { const r = this.vring(); return vq.queuesOf(this.cfg.kind).map((q) => vq.usedIdx(r, q)); },
    availIdx(this: Agent): number[] { const r = this.vring(); return vq.queuesOf(this.cfg.kind).map((q) => vq.availIdx(r, q)); },
    bases(this: Agent): number[] { return vq.queuesOf(this.cfg.kind).map((q) => vhost.getVringBase(this.dev(), q)); },
    /** Open fds of this process: total, and how many name the device node / a memfd of ours. */
    fds(this: Agent): { total: number; device: number; memfd: number; cloexecDev: boolean | null } {
      let device = 0, memfd = 0, total = 0;
      for (const n of readdirSync('/proc/self/fd')) {
        let t = ''; try { t = readlinkSync(`/proc/self/fd/${n}`); } catch { continue; }
        total++;
        if (t === this.cfg.device) device++;
        if (t.startsWith('/memfd:conformance-')) memfd++;
      }
      return { total, device, memfd, cloexecDev: this.fd === null ? null : libc.isCloexec(this.fd) };
    },
    sleep(ms: number): void { vq.sleepMs(ms); },
    /** Close the device fd (if owned by this role), memfds and eventfds; unmap. */
    releaseAll(this: Agent, closeDev = true): void {
      if (closeDev && this.fd !== null) { try { libc.close(this.fd); } catch { /* already closed */ } }
      this.fd = null;
      for (const m of this.mem.values()) {
        if (m.addr) { try { libc.munmap(m.addr, m.size); } catch { /* gone */ } }
        if (m.fd >= 0) { try { libc.close(m.fd); } catch { /* gone */ } }
      }
      this.mem.clear();
      for (const e of this.efds.values()) { try { libc.close(e); } catch { /* gone */ } }
      this.efds.clear();
    },
    /**
     * execve(binary) of the suite's entry with the device fd (unless keepDev is false), the memfds and
     * the eventfds kept. Only returns on failure, after restoring FD_CLOEXEC (as QEMU does).
     */
    exec(this: Agent, opts: { keepDev?: boolean; binary?: string; reqId?: number; env?: Record<string, string> } = {}): never {
      const keep = [0, 1, 2, ...[...this.mem.values()].filter((m) => m.fd >= 0).map((m) => m.fd), ...this.efds.values()];
      if (opts.keepDev !== false && this.fd !== null) keep.push(this.fd);
      const state: ExecState = {
        cfg: this.cfg, fd: opts.keepDev === false ? null : this.fd, reqId: opts.reqId ?? 0, ringIova: this.ringIova,
        mem: Object.fromEntries([...this.mem].filter(([, m]) => m.fd >= 0).map(([k, m]) => [k, { fd: m.fd, size: m.size }])),
        efds: Object.fromEntries(this.efds),
      };
      for (const fd of keep) libc.setCloexec(fd, false);
      try {
        libc.execve(opts.binary ?? process.execPath, [process.execPath, this.cfg.entry],
          { ...process.env, ...opts.env, MINIVMM_CONF_ROLE: 'peer', MINIVMM_CONF_STATE: enc(state) });
      } finally {
        for (const fd of keep) libc.setCloexec(fd, true);
      }
    },
  };
}

