// One vhost-vdpa device file: the kernel's drivers/vhost/vdpa.c + vhost core semantics as
// docs/vhost-vdpa-live-update.md §3 states them (the § numbers below are its sections) —
// open/release, ownership by address space, ioctl dispatch order and errnos, backend features,
// status, suspend/resume, IOTLB write() parsing, the IOTLB handler with lazily created address
// spaces and batching, pinned-page accounting (pa), VHOST_NEW_OWNER and VHOST_IOTLB_REMAP
// (patched model) with the quirk switches of §3.12 (Q1, Q2).
import { constants } from 'node:os';
import { readlinkSync } from 'node:fs';
import { close, errnoName, pidfdGetfd, pidfdOpen, processVmRead, processVmWrite, open as sysOpen, O_RDWR, O_CLOEXEC } from '../../src/libc.js';
import { BACKEND_F, IOTLB, IOTLB_PERM, VHOST, VHOST_IOTLB_MSG, VHOST_IOTLB_MSG_V2, VIRTIO_STATUS, decodeIotlbMsg } from '../../src/vhost.js';
import { PaDma, VaDma, type BoundMm, type Dma } from './dma.js';
import { AddressSpace, PAGE, PinLedger, U64_MAX, fileShared, findVma, pinRange, readMaps, unpin, type Entry } from './iotlb.js';
import { callerOf, memlockPages, sameOwner, type OwnerId } from './owner.js';
import { NetDevice } from './net.js';
import { BlkDevice } from './blk.js';
import type { SimDevice } from './sim.js';
import { MGMTDEV, type DeviceSpec, type Quirks } from './spec.js';

const E = constants.errno;
export class Errno extends Error {
  constructor(readonly errno: number, why = '') { super(`${errnoName(errno)}${why ? `: ${why}` : ''}`); }
}
const err = (name: keyof typeof E, why?: string) => new Errno(E[name], why);


/** What the event loop provides to a device. */
export interface DeviceHost {
  ledger: PinLedger;
  pinCostMsPerGib: number;
  watchKick(dev: VdpaDevice, vq: number, fd: number | null): void; // register/unregister a kick eventfd
  closeElsewhere(fd: number): void; // close on another thread (the fd may be a file of our own mount)
  log(msg: string): void;
}

const MAX_MEM_REGIONS = 64;
const { DRIVER_OK, FEATURES_OK } = VIRTIO_STATUS;
/** Bits SET_BACKEND_FEATURES accepts upstream: MSG_V2, BATCH, ASID, SUSPEND, RESUME, ENABLE_AFTER_DRIVER_OK, DESC_ASID, PERSIST. */
const UPSTREAM_ACCEPTED = 0x1fen;

interface VhostVq { num: number; desc: bigint; avail: bigint; used: bigint; lastAvail: number; kick: number | null; call: number | null; err: number | null; busyloop: number }
const freshVq = (): VhostVq => ({ num: 1, desc: 0n, avail: 0n, used: 0n, lastAvail: 0, kick: null, call: null, err: null, busyloop: 0 });

export interface IoctlRequest { tid: number; cmd: number; arg: bigint; in: Buffer; outSize: number }

/**
 * Fault injection, after the kernel's fail_function (armed through the daemon's `faults` file;
 * test use only): the next `times` calls of `op` fail with `errno` at the top of its handler and
 * change nothing, or are held for `delayMs` first (a slow device). A REMAP or UPDATE failure, being
 * an IOTLB handler error, reaches the caller of write() as EFAULT, as every handler error does (§3.7).
 */
export const FAULT_OPS = ['new-owner', 'remap', 'update', 'suspend'] as const;
export type FaultOp = typeof FAULT_OPS[number];
export interface Fault { errno?: keyof typeof E; delayMs?: number; times: number }

export class VdpaDevice {
  readonly sim: SimDevice;
  readonly useVa: boolean;
  readonly patched: boolean;
  /** Parent-advertised backend features (GET_BACKEND_FEATURES). */
  readonly advertised: bigint;
  readonly quirks: Required<Quirks>;
  opened = false;
  fh = 0;
  owner: OwnerId | null = null;
  bound: BoundMm | null = null; // va parent bound to the owner's mm (bind_mm)
  acked = 0n; // negotiated backend features
  vqs: VhostVq[];
  configCall: number | null = null;
  ases = new Map<number, AddressSpace>();
  inBatch = false;
  batchAsid = 0;
  pinnedPages = 0; // device pinned count (patch 1/7), summed over address spaces
  readonly counters = { opens: 0, releases: 0, ioctls: 0, writes: 0, errors: 0, injected: 0, errnos: {} as Record<string, number> };
  readonly faults = new Map<FaultOp, Fault>();
  /** `vdpa dev del` has removed the node; the device lives until its file is released. */
  deleting = false;
  private readonly dmas = new Map<number, Dma>();

  /** `node`: the file name (vhost-vdpa-N); `ino`: its inode in the daemon's mount. */
  constructor(readonly spec: DeviceSpec, private readonly host: DeviceHost, readonly node: string, readonly ino: number) {
    this.sim = spec.type === 'net' ? new NetDevice(spec.mac) : new BlkDevice(spec.backing);
    this.sim.log = (m) => host.log(`${spec.name}: ${m}`);
    this.sim.dmaForAsid = (asid) => this.dmaFor(asid);
    this.useVa = spec.dma === 'va';
    this.patched = spec.model !== 'no-new-owner';
    // 0xE + SUSPEND + RESUME + IOTLB_PERSIST + get_backend_features (ENABLE_AFTER_DRIVER_OK,
    // patched: NEW_OWNER, and IOTLB_REMAP only for a VA parent — a PA parent must not, Q4).
    let adv = BACKEND_F.IOTLB_MSG_V2 | BACKEND_F.IOTLB_BATCH | BACKEND_F.IOTLB_ASID | BACKEND_F.SUSPEND | BACKEND_F.RESUME |
      BACKEND_F.IOTLB_PERSIST | BACKEND_F.ENABLE_AFTER_DRIVER_OK;
    if (this.patched) adv |= BACKEND_F.NEW_OWNER | (this.useVa ? BACKEND_F.IOTLB_REMAP : 0n);
    this.advertised = adv;
    this.quirks = { remapLagsOutsideBatch: !!spec.quirks?.remapLagsOutsideBatch, newOwnerRlimitBeforeBusy: !!spec.quirks?.newOwnerRlimitBeforeBusy };
    this.vqs = Array.from({ length: this.sim.profile.nvqs }, freshVq);
  }

  private dmaFor(asid: number): Dma {
    let d = this.dmas.get(asid);
    if (!d) {
      const view = () => this.ases.get(asid)?.view ?? [];
      d = this.useVa ? new VaDma(view, () => this.bound) : new PaDma(view);
      this.dmas.set(asid, d);
    }
    return d;
  }
  private acks = (bit: bigint): boolean => (this.acked & bit) !== 0n;

  // ---------------------------------------------------------------- open / release (§3.1)

  open(): number {
    if (this.opened) throw err('EBUSY');
    this.opened = true;
    this.counters.opens++;
    this.fh = (this.fh + 1) >>> 0;
    this.acked = 0n;
    this.vqs = Array.from({ length: this.sim.profile.nvqs }, freshVq);
    this.reset(); // open resets (clean map: nothing negotiated yet)
    return this.fh;
  }

  release(): void {
    if (!this.opened) return;
    this.counters.releases++;
    this.reset();
    this.unbindMm();
    this.setConfigCall(null);
    for (let i = 0; i < this.vqs.length; i++) {
      const vq = this.vqs[i];
      if (vq.kick !== null) { this.host.watchKick(this, i, null); this.closeFd(vq.kick); }
      if (vq.call !== null) this.closeFd(vq.call);
      if (vq.err !== null) this.closeFd(vq.err);
    }
    this.vqs = Array.from({ length: this.sim.profile.nvqs }, freshVq);
    for (const as of this.ases.values()) this.unmap(as, 0n, U64_MAX, false);
    this.ases.clear();
    this.owner = null;
    this.acked = 0n;
    this.inBatch = false;
    this.opened = false;
  }

  /** vhost_vdpa_reset: parent reset, clean map unless IOTLB_PERSIST negotiated; vhost IOTLB kept. */
  private reset(): void {
    this.sim.reset();
    if (!this.acks(BACKEND_F.IOTLB_PERSIST)) for (const as of this.ases.values()) as.view = [];
    this.inBatch = false;
  }

  private closeFd(fd: number): void {
    for (const vq of this.sim.vqs) if (vq.callFd === fd) vq.callFd = null;
    if (this.sim.configCallFd === fd) this.sim.configCallFd = null;
    try { close(fd); } catch { /* ignore */ }
  }

  // ---------------------------------------------------------------- ownership (§3.2)

  private caller(tid: number): OwnerId | null { return callerOf(tid); }
  private isOwner(tid: number): boolean { return this.owner !== null && sameOwner(this.caller(tid), this.owner); }
  private checkOwner(tid: number): void { if (!this.isOwner(tid)) throw err('EPERM'); }

  /** vdpa_sim bind_mm: keep a handle on the owner's current address space. */
  private bindMm(o: OwnerId): void {
    if (!this.useVa) return;
    let memFd: number;
    try { memFd = sysOpen(`/proc/${o.pid}/mem`, O_RDWR | O_CLOEXEC); } catch { throw err('ESRCH', 'bind_mm'); /* the kernel's answer when the caller's mm is gone */ }
    this.unbindMm();
    this.bound = { pid: o.pid, memFd };
  }
  private unbindMm(): void {
    if (this.bound) { try { close(this.bound.memFd); } catch { /* ignore */ } this.bound = null; }
  }

  // ---------------------------------------------------------------- ioctl (§3.3)

  ioctl(r: IoctlRequest): Buffer | undefined {
    this.counters.ioctls++;
    const { cmd } = r;
    // 1. SET_BACKEND_FEATURES: before the device lock, no owner check.
    if (cmd === VHOST.SET_BACKEND_FEATURES) { this.setBackendFeatures(r.in.readBigUInt64LE(0)); return; }
    const sim = this.sim, p = sim.profile;
    switch (cmd) {
      case VHOST.VDPA_GET_DEVICE_ID: return u32(p.deviceId);
      case VHOST.VDPA_GET_STATUS: return Buffer.from([sim.status]);
      case VHOST.VDPA_SET_STATUS: this.setStatus(r.in[0]); return;
      case VHOST.VDPA_GET_CONFIG: return this.getConfig(r);
      case VHOST.VDPA_SET_CONFIG: this.setConfig(r); return;
      case VHOST.GET_FEATURES: return u64(p.features);
      case VHOST.SET_FEATURES: {
        if (sim.status & FEATURES_OK) throw err('EBUSY');
        if (!sim.setFeatures(r.in.readBigUInt64LE(0))) throw err('EINVAL', 'features rejected by the parent');
        return;
      }
      case VHOST.VDPA_GET_VRING_NUM: { const b = Buffer.alloc(2); b.writeUInt16LE(p.vringMax); return b; }
      case VHOST.VDPA_GET_GROUP_NUM: return u32(p.ngroups);
      case VHOST.VDPA_GET_AS_NUM: return u32(p.nas);
      case VHOST.SET_LOG_BASE: case VHOST.SET_LOG_FD: throw err('ENOTTY');
      case VHOST.VDPA_SET_CONFIG_CALL: {
        const fd = r.in.readInt32LE(0);
        this.setConfigCall(fd === -1 ? null : this.fdFromCaller(r.tid, fd));
        return;
      }
      case VHOST.VDPA_GET_IOVA_RANGE: { const b = Buffer.alloc(16); b.writeBigUInt64LE(0n, 0); b.writeBigUInt64LE(U64_MAX, 8); return b; }
      case VHOST.VDPA_GET_CONFIG_SIZE: return u32(p.config.length);
      case VHOST.VDPA_GET_VQS_COUNT: return u32(p.nvqs);
      case VHOST.VDPA_SUSPEND:
        this.failIfInjected('suspend');
        if (!(sim.status & DRIVER_OK)) return;
        sim.suspend(); return;
      case VHOST.VDPA_RESUME:
        if (!(sim.status & DRIVER_OK)) return;
        sim.resume(); return;
      case VHOST.GET_BACKEND_FEATURES: return u64(this.advertised);
      case VHOST.NEW_OWNER:
        if (this.patched) { this.newOwner(r.tid); return; }
        break; // upstream: an unknown ioctl
    }
    // vhost_dev_ioctl: SET_OWNER, then the owner check, then SET_MEM_TABLE, else the vring path.
    if (cmd === VHOST.SET_OWNER) {
      if (this.owner) throw err('EBUSY');
      const o = this.caller(r.tid);
      if (!o) throw err('ESRCH', 'caller vanished');
      this.owner = o;
      try { this.bindMm(o); } catch (e) { this.owner = null; throw e; }
      return;
    }
    this.checkOwner(r.tid);
    if (cmd === VHOST.SET_MEM_TABLE) { this.setMemTable(r); return; }
    return this.vringIoctl(r);
  }

  private setBackendFeatures(f: bigint): void {
    const accepted = UPSTREAM_ACCEPTED | (this.patched ? BACKEND_F.NEW_OWNER | BACKEND_F.IOTLB_REMAP : 0n);
    if (f & ~accepted) throw err('EOPNOTSUPP');
    // Our parents have suspend, resume and a persistent map, and no desc-group op.
    if ((f & BACKEND_F.DESC_ASID) && !(f & BACKEND_F.IOTLB_ASID)) throw err('EINVAL');
    if (f & BACKEND_F.DESC_ASID) throw err('EOPNOTSUPP');
    this.acked = f;
  }

  /** vhost_vdpa_set_status. */
  private setStatus(status: number): void {
    const old = this.sim.status;
    if (status !== 0 && (old & ~status) !== 0) throw err('EINVAL', 'status bits may only be cleared by a reset');
    if (status === 0) this.reset();
    else this.sim.setStatus(status);
  }

  private configHeader(r: IoctlRequest, fromCaller: boolean): { off: number; len: number; hdr: Buffer } {
    let hdr = r.in;
    if (fromCaller) { hdr = Buffer.alloc(8); this.readCaller(r.tid, r.arg, hdr); }
    const off = hdr.readUInt32LE(0), len = hdr.readUInt32LE(4), size = this.sim.config.length;
    // vhost_vdpa_config_validate says E2BIG for len > size - off, but its callers return EINVAL
    // for any failure (drivers/vhost/vdpa.c), so userspace only ever sees EINVAL.
    if (len === 0 || off > size || len > size - off) throw err('EINVAL');
    return { off, len, hdr };
  }
  private getConfig(r: IoctlRequest): Buffer {
    const { off, len, hdr } = this.configHeader(r, true); // _IOR: the header is still read from the caller
    const data = Buffer.from(this.sim.config.subarray(off, off + len));
    try { processVmWrite(r.tid, data, Number(r.arg + 8n)); } catch { throw err('EFAULT'); /* copy_to_user failing */ }
    return hdr;
  }
  private setConfig(r: IoctlRequest): void {
    const { off, len } = this.configHeader(r, false);
    const data = Buffer.alloc(len);
    this.readCaller(r.tid, r.arg + 8n, data);
    data.copy(this.sim.config, off);
  }

  private setConfigCall(fd: number | null): void {
    const old = this.configCall;
    this.configCall = fd;
    this.sim.configCallFd = fd;
    if (old !== null && old !== fd) this.closeFd(old);
  }

  /** vhost_set_memory: validated, then unused (vdpa maps through the IOTLB). */
  private setMemTable(r: IoctlRequest): void {
    const n = r.in.readUInt32LE(0), padding = r.in.readUInt32LE(4);
    if (padding) throw err('EOPNOTSUPP');
    if (n > MAX_MEM_REGIONS) throw err('E2BIG');
    const regions = Buffer.alloc(32 * n);
    if (n) this.readCaller(r.tid, r.arg + 8n, regions);
    for (let i = 0; i < n; i++) {
      const gpa = regions.readBigUInt64LE(32 * i), size = regions.readBigUInt64LE(32 * i + 8);
      if (((gpa + size - 1n) & U64_MAX) < gpa) throw err('EFAULT');
    }
  }

  /** get_user()/copy_from_user() from the caller's memory. */
  private readCaller(tid: number, addr: bigint, into: Buffer): void {
    if (addr === 0n || addr > U64_MAX) throw err('EFAULT');
    try {
      if (processVmRead(tid, into, Number(addr)) !== into.length) throw err('EFAULT');
    } catch { throw err('EFAULT'); /* copy_from_user failing */ }
  }

  /** eventfd_ctx_fdget in the caller's fd table: a dup for the daemon (EBADF / EINVAL). */
  private fdFromCaller(tid: number, fd: number): number {
    if (fd < 0) throw err('EBADF');
    const o = this.caller(tid);
    if (!o) throw err('EBADF');
    // Look before taking a dup: closing a dup of a file on our own FUSE mount from this thread
    // would send FLUSH to ourselves and deadlock.
    let theirs: string;
    try { theirs = readlinkSync(`/proc/${o.pid}/fd/${fd}`); } catch { throw err('EBADF'); /* no such fd in the caller: fget failing */ }
    if (theirs !== 'anon_inode:[eventfd]') throw err('EINVAL', 'not an eventfd');
    let pidfd: number;
    try { pidfd = pidfdOpen(o.pid); } catch { throw err('EBADF'); /* the caller is gone: as fget would fail */ }
    let dup: number;
    try { dup = pidfdGetfd(pidfd, fd); } catch { throw err('EBADF'); /* fget failing */ } finally { close(pidfd); }
    let kind = '';
    try { kind = readlinkSync(`/proc/self/fd/${dup}`); } catch { /* ignore */ }
    if (kind !== 'anon_inode:[eventfd]') { this.host.closeElsewhere(dup); throw err('EINVAL', 'not an eventfd'); }
    return dup;
  }

  /** vhost_vdpa_vring_ioctl + vhost_vring_ioctl. */
  private vringIoctl(r: IoctlRequest): Buffer | undefined {
    const { cmd } = r;
    let idx: number;
    if (r.in.length >= 4) idx = r.in.readUInt32LE(0);
    else { const b = Buffer.alloc(4); this.readCaller(r.tid, r.arg, b); idx = b.readUInt32LE(0); }
    const sim = this.sim, p = sim.profile;
    if (idx >= p.nvqs) throw err('ENOBUFS');
    const vq = this.vqs[idx], svq = sim.vqs[idx];
    const num = () => r.in.readUInt32LE(4);
    const state = (n: number) => { const b = Buffer.alloc(8); b.writeUInt32LE(idx, 0); b.writeUInt32LE(n >>> 0, 4); return b; };
    switch (cmd) {
      case VHOST.VDPA_SET_VRING_ENABLE: sim.setVqReady(idx, num() !== 0); return;
      case VHOST.VDPA_GET_VRING_GROUP: {
        const g = p.vqGroup(idx);
        if (g >= p.ngroups) throw err('EIO');
        return state(g);
      }
      case VHOST.VDPA_GET_VRING_DESC_GROUP: throw err('EOPNOTSUPP'); // no desc-group op
      case VHOST.VDPA_SET_GROUP_ASID: {
        const asid = num();
        if (asid >= p.nas) throw err('EINVAL');
        if (idx > p.ngroups) throw err('EINVAL'); // vdpasim_set_group_asid checks group > ngroups
        if (idx < p.ngroups) sim.groupAsid[idx] = asid;
        return;
      }
      case VHOST.VDPA_GET_VRING_SIZE: return state(svq.num || p.vringMax);
      case VHOST.GET_VRING_BASE: vq.lastAvail = svq.lastAvail; return state(vq.lastAvail);
    }
    // vhost_vring_ioctl
    switch (cmd) {
      case VHOST.SET_VRING_NUM: {
        const n = num();
        if (!n || n > 0xffff || (n & (n - 1))) throw err('EINVAL');
        vq.num = n; svq.num = n; return;
      }
      case VHOST.SET_VRING_ADDR: {
        const flags = r.in.readUInt32LE(4);
        const desc = r.in.readBigUInt64LE(8), used = r.in.readBigUInt64LE(16), avail = r.in.readBigUInt64LE(24), log = r.in.readBigUInt64LE(32);
        if (flags & ~1) throw err('EOPNOTSUPP');
        if ((avail & 1n) || (used & 3n) || (log & 3n)) throw err('EINVAL');
        vq.desc = desc; vq.used = used; vq.avail = avail;
        svq.desc = Number(desc); svq.driver = Number(avail); svq.device = Number(used);
        return;
      }
      case VHOST.SET_VRING_BASE: {
        const n = num();
        if (n > 0xffff) throw err('EINVAL');
        vq.lastAvail = n; svq.lastAvail = n; return;
      }
      case VHOST.SET_VRING_KICK: {
        const fd = r.in.readInt32LE(4);
        const nfd = fd === -1 ? null : this.fdFromCaller(r.tid, fd);
        if (vq.kick !== null) { this.host.watchKick(this, idx, null); this.closeFd(vq.kick); }
        vq.kick = nfd;
        if (nfd !== null) this.host.watchKick(this, idx, nfd); // vhost_poll_start kicks once if already signalled
        return;
      }
      case VHOST.SET_VRING_CALL: {
        const fd = r.in.readInt32LE(4);
        const nfd = fd === -1 ? null : this.fdFromCaller(r.tid, fd);
        const old = vq.call;
        vq.call = nfd;
        svq.callFd = nfd; // set_vq_cb
        if (old !== null && old !== nfd) this.closeFd(old);
        return;
      }
      case VHOST.SET_VRING_ERR: {
        const fd = r.in.readInt32LE(4);
        const nfd = fd === -1 ? null : this.fdFromCaller(r.tid, fd);
        if (vq.err !== null) this.closeFd(vq.err);
        vq.err = nfd; return;
      }
      case VHOST.SET_VRING_ENDIAN: case VHOST.GET_VRING_ENDIAN: throw err('ENOTTY');
      case VHOST.SET_VRING_BUSYLOOP_TIMEOUT: vq.busyloop = num(); return;
      case VHOST.GET_VRING_BUSYLOOP_TIMEOUT: return; // _IOW-encoded: nothing travels back
    }
    throw err('ENOTTY'); // -ENOIOCTLCMD
  }

  /** Throws the armed fault for `op`, if any (see FAULT_OPS). */
  private failIfInjected(op: FaultOp): void {
    const f = this.faults.get(op);
    if (!f) return;
    if (--f.times <= 0) this.faults.delete(op);
    this.counters.injected++;
    this.host.log(`${this.spec.name}: injected ${f.errno ?? `a ${f.delayMs} ms delay`} into ${op}`);
    if (f.delayMs) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, f.delayMs);
    if (f.errno) throw err(f.errno, `injected into ${op}`);
  }

  // ---------------------------------------------------------------- VHOST_NEW_OWNER (§3.10)

  private newOwner(tid: number): void {
    this.failIfInjected('new-owner');
    if (!(this.advertised & BACKEND_F.NEW_OWNER)) throw err('EOPNOTSUPP');
    if (!this.owner) throw err('EINVAL');
    const c = this.caller(tid);
    if (!c) throw err('ESRCH');
    const busy = () => { if (sameOwner(c, this.owner)) throw err('EBUSY'); };
    const rlimit = () => {
      if (!this.useVa && this.pinnedPages + this.host.ledger.get(c) > memlockPages(c.pid)) throw err('ENOMEM');
    };
    if (this.quirks.newOwnerRlimitBeforeBusy) { rlimit(); busy(); } else { busy(); rlimit(); }
    const old = this.owner;
    this.bindMm(c);
    this.owner = c;
    if (!this.useVa && this.pinnedPages) { this.host.ledger.add(old, -this.pinnedPages); this.host.ledger.add(c, this.pinnedPages); }
  }

  // ---------------------------------------------------------------- write(): IOTLB messages (§3.7)

  write(tid: number, data: Buffer): number {
    this.counters.writes++;
    if (data.length < 4) throw err('EINVAL');
    const type = data.readUInt32LE(0);
    let asid = 0;
    if (type === VHOST_IOTLB_MSG_V2) {
      if (this.acks(BACKEND_F.IOTLB_ASID)) { if (data.length < 8) throw err('EINVAL'); asid = data.readUInt32LE(4); }
    } else if (type !== VHOST_IOTLB_MSG) throw err('EINVAL');
    if (data.length < 40) throw err('EINVAL');
    const m = decodeIotlbMsg(Buffer.concat([data.subarray(0, 40), Buffer.alloc(32)]));
    if (m.type === IOTLB.UPDATE && m.size === 0n) throw err('EINVAL');
    try {
      this.iotlbMsg(tid, asid, m.type, m.iova, m.size, m.uaddr, m.perm);
    } catch (e) {
      if (e instanceof Errno) { this.host.log(`${this.spec.name}: IOTLB handler: ${e.message} → EFAULT`); throw err('EFAULT', e.message); }
      throw e;
    }
    return 72;
  }

  // ---------------------------------------------------------------- IOTLB handler (§3.8)

  private iotlbMsg(tid: number, asid: number, type: number, iova: bigint, size: bigint, uaddr: bigint, perm: number): void {
    this.checkOwner(tid);
    let as: AddressSpace | undefined;
    if (type === IOTLB.UPDATE || type === IOTLB.BATCH_BEGIN) {
      if (asid >= this.sim.profile.nas) throw err('EINVAL', `can't find and alloc asid ${asid}`);
      as = this.ases.get(asid);
      if (!as) { as = new AddressSpace(asid); this.ases.set(asid, as); }
    } else as = this.ases.get(asid);
    if ((this.inBatch && this.batchAsid !== asid) || !as) throw err('EINVAL', as ? `batch id ${this.batchAsid} asid ${asid}` : `no iotlb for asid ${asid}`);
    switch (type) {
      case IOTLB.UPDATE: return this.update(as, iova, size, uaddr, perm);
      case IOTLB.INVALIDATE: this.unmap(as, iova, (iova + size - 1n) & U64_MAX, true); return;
      case IOTLB.BATCH_BEGIN: this.batchAsid = asid; this.inBatch = true; return;
      case IOTLB.BATCH_END: if (this.inBatch) as.push(); this.inBatch = false; return;
      case IOTLB.REMAP: if (this.patched) { this.remap(as, iova, size, uaddr, perm); return; } break;
    }
    throw err('EINVAL', `message type ${type}`);
  }

  /** set_map unless batching. */
  private pushUnlessBatch(as: AddressSpace): void { if (!this.inBatch) as.push(); }

  private update(as: AddressSpace, iova: bigint, size: bigint, uaddr: bigint, perm: number): void {
    this.failIfInjected('update');
    if (iova < 0n || size === 0n || iova > U64_MAX - size + 1n || iova + size - 1n > U64_MAX) throw err('EINVAL');
    const last = iova + size - 1n;
    if (as.intersecting(iova, last).length) throw err('EEXIST');
    if (this.useVa) this.vaMap(as, iova, size, uaddr, perm);
    else this.paMap(as, iova, size, uaddr, perm);
  }

  /** vhost_vdpa_map: enter one entry, tell the parent, count pins (pa). */
  private map(as: AddressSpace, e: Entry): void {
    as.add(e);
    this.pushUnlessBatch(as);
    if (e.pin) { this.pinnedPages += e.pin.pages; this.host.ledger.add(this.owner!, e.pin.pages); }
  }

  /** vhost_vdpa_va_map: only file-backed shared mappings are entered; the rest is skipped silently. */
  private vaMap(as: AddressSpace, iova: bigint, size: bigint, uaddr: bigint, perm: number): void {
    const maps = readMaps(this.owner!.pid);
    let mapIova = iova, left = size, at = uaddr, failed: Errno | null = null;
    while (left > 0n) {
      const v = findVma(maps, Number(at));
      if (!v) { failed = err('EINVAL', 'no vma'); break; }
      const mapSize = left < BigInt(v.end) - at ? left : BigInt(v.end) - at;
      if (fileShared(v)) {
        this.map(as, {
          start: mapIova, last: mapIova + mapSize - 1n, addr: at, perm,
          file: { path: v.path, offset: BigInt(v.offset) + at - BigInt(v.start) },
        });
      }
      left -= mapSize; at += mapSize; mapIova += mapSize;
    }
    if (failed) { this.unmap(as, iova, (mapIova - 1n) & U64_MAX, true); throw failed; }
  }

  /** vhost_vdpa_pa_map: rlimit check, then pin (map + mlock) every page, one entry per mapping piece. */
  private paMap(as: AddressSpace, iova: bigint, size: bigint, uaddr: bigint, perm: number): void {
    const pageOff = iova & BigInt(PAGE - 1);
    const npages = Number((size + pageOff + BigInt(PAGE - 1)) / BigInt(PAGE));
    const owner = this.owner!;
    if (npages + this.host.ledger.get(owner) > memlockPages(owner.pid)) throw err('ENOMEM', `${npages} pages over RLIMIT_MEMLOCK`);
    const base = Number(uaddr & ~BigInt(PAGE - 1));
    let pieces;
    const cost = this.spec.pinCostMsPerGib ?? this.host.pinCostMsPerGib;
    try { pieces = pinRange(owner.pid, base, npages * PAGE, (perm & IOTLB_PERM.WO) !== 0, cost); } catch (e) {
      throw err('EFAULT', (e as Error).message);
    }
    let at = iova & ~BigInt(PAGE - 1);
    for (const p of pieces) {
      this.map(as, { start: at, last: at + BigInt(p.len) - 1n, addr: BigInt(p.pin.addr), perm, pin: p.pin });
      at += BigInt(p.len);
    }
  }

  /** vhost_vdpa_unmap: remove whole entries intersecting [start, last]; pa: unpin, uncount from the current owner. */
  private unmap(as: AddressSpace, start: bigint, last: bigint, push: boolean): void {
    for (const e of as.intersecting(start, last)) {
      as.remove(e);
      if (e.pin) {
        unpin(e.pin);
        this.pinnedPages -= e.pin.pages;
        if (this.owner) this.host.ledger.add(this.owner, -e.pin.pages);
      }
    }
    if (push) this.pushUnlessBatch(as);
  }

  // ---------------------------------------------------------------- VHOST_IOTLB_REMAP (§3.11)

  private remap(as: AddressSpace, iova: bigint, size: bigint, uaddr: bigint, perm: number): void {
    this.failIfInjected('remap');
    if (perm !== 0 || size === 0n) throw err('EINVAL');
    if (!(this.advertised & BACKEND_F.IOTLB_REMAP)) throw err('EOPNOTSUPP');
    const last = (iova + size - 1n) & U64_MAX;
    const hit = as.intersecting(iova, last);
    if (!hit.length) throw err('ENOENT');
    const e = hit[0];
    if (e.start !== iova || e.last !== last) throw err('EINVAL');
    // Steps 5 and 6: both parents use set_map.
    if (this.inBatch) { e.addr = uaddr; return; }
    if (this.quirks.remapLagsOutsideBatch) { as.push(); e.addr = uaddr; } else { e.addr = uaddr; as.push(); }
  }

  // ---------------------------------------------------------------- kicks and status

  kick(vq: number): void { this.sim.kick(vq); }

  /** Gone from the table (`vdpa dev del`, released): let go of what the model holds. */
  destroy(): void { this.sim.destroy(); }

  status(): object {
    const sim = this.sim;
    let entries = 0;
    for (const as of this.ases.values()) entries += as.entries.length;
    const p = sim.profile;
    return {
      name: this.spec.name, node: this.node, deleting: this.deleting, mgmtdev: MGMTDEV[this.spec.type],
      deviceId: p.deviceId, vendorId: 0, maxVqs: p.nvqs, maxVqSize: p.vringMax,
      type: this.spec.type, dma: this.spec.dma, model: this.patched ? 'patched' : 'no-new-owner',
      quirks: this.quirks,
      open: this.opened,
      owner: this.owner ? { pid: this.owner.pid, fingerprint: this.owner.fingerprint } : null,
      status: sim.status,
      suspended: !sim.running && (sim.status & DRIVER_OK) !== 0,
      features: `0x${sim.features.toString(16)}`,
      backendFeatures: `0x${this.acked.toString(16)}`,
      advertisedBackendFeatures: `0x${this.advertised.toString(16)}`,
      vqs: this.vqs.map((vq, i) => ({ num: sim.vqs[i].num || vq.num, enabled: sim.vqs[i].ready, last_avail: sim.vqs[i].lastAvail, used_idx: sim.vqs[i].usedIdx })),
      entries,
      addressSpaces: [...this.ases.values()].map((as) => ({
        asid: as.asid,
        entries: as.entries.map((e) => ({ iova: `0x${e.start.toString(16)}`, size: `0x${(e.last - e.start + 1n).toString(16)}`, perm: e.perm, addr: `0x${e.addr.toString(16)}`, file: e.file?.path })),
        parentEntries: as.view.length,
      })),
      inBatch: this.inBatch,
      pinnedPages: this.pinnedPages,
      counters: { ...this.counters, ...sim.counters },
      lastRingError: sim.lastRingError,
      faults: Object.fromEntries(this.faults),
    };
  }
}

const u32 = (v: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32LE(v >>> 0); return b; };
const u64 = (v: bigint): Buffer => { const b = Buffer.alloc(8); b.writeBigUInt64LE(v); return b; };
