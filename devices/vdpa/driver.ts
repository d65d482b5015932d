// A small host-side virtio driver for the simulated devices, through the vhost-vdpa UAPI only:
// guest memory in a shared memfd mapped into this process, split rings built in it, one UPDATE,
// the status walk to DRIVER_OK, kicks and calls through eventfds. Used by the tests and the bench.
import { close, eventfd, EFD_CLOEXEC, EFD_NONBLOCK, read as sysRead, write as sysWrite, SyscallError } from '../../src/libc.js';
import { GuestMemory } from '../../src/memory.js';
import { BACKEND_F, IOTLB, IOTLB_PERM, VIRTIO_F, VIRTIO_STATUS, vhost } from '../../src/vhost.js';
import { VRING_AVAIL, VRING_DESC, VRING_DESC_F, VRING_USED, VRING_USED_ALIGN_SIZE, VRING_USED_ELEM } from './virtqueue.js';

// Ring sizes for `num` entries: avail (flags, idx, ring, used_event), used (flags, idx, ring, avail_event).
const availBytes = (num: number) => VRING_AVAIL.ring + 2 * num + 2;
const usedBytes = (num: number) => VRING_USED.ring + VRING_USED_ELEM.sizeof * num + 2;
const usedAlign = (at: number) => (at + VRING_USED_ALIGN_SIZE - 1) & ~(VRING_USED_ALIGN_SIZE - 1);

/** The driver's memory: guest RAM (one memfd region, at most 3 GiB) entered at iova = iovaBase + offset. */
export class DriverMemory {
  private readonly ram: GuestMemory;
  readonly fd: number; readonly addr: number; readonly buf: Buffer;
  constructor(readonly size: number, readonly iovaBase = 0x40000000) {
    this.ram = GuestMemory.create(size);
    [{ fd: this.fd, hostAddr: this.addr }] = this.ram.regions;
    this.buf = this.ram.view(0, size);
  }
  iova(off: number): number { return this.iovaBase + off; }
  /** The IOTLB UPDATE that enters the whole memory. */
  update(fd: number, asid = 0): void {
    vhost.iotlb(fd, { type: IOTLB.UPDATE, iova: BigInt(this.iovaBase), size: BigInt(this.size), uaddr: BigInt(this.addr), perm: IOTLB_PERM.RW, asid });
  }
  free(): void { this.ram.unmap(); close(this.fd); }
}

export interface BufSpec { off: number; len: number; write: boolean }

/** The driver's side of one split ring living in guest memory at `off` (desc, avail, used). */
export class DriverRing {
  readonly desc: number; readonly avail: number; readonly used: number;
  availIdx = 0; lastUsed = 0;
  private free: number[];
  private chainLen = new Map<number, number[]>();
  constructor(readonly mem: DriverMemory, readonly off: number, readonly num: number) {
    this.desc = off; this.avail = off + VRING_DESC.sizeof * num; this.used = usedAlign(this.avail + availBytes(num));
    this.mem.buf.fill(0, off, this.used + usedBytes(num));
    this.free = Array.from({ length: num }, (_, i) => num - 1 - i);
  }
  static bytes(num: number): number { return usedAlign(VRING_DESC.sizeof * num + availBytes(num)) + usedBytes(num); }
  get freeCount(): number { return this.free.length; }
  /** Put a chain in the descriptor table and the avail ring (not yet published). */
  add(bufs: BufSpec[]): number {
    if (bufs.length > this.free.length) throw new Error('ring full');
    const ids = bufs.map(() => this.free.pop()!);
    const b = this.mem.buf;
    bufs.forEach((s, i) => {
      const D = VRING_DESC, o = this.desc + D.sizeof * ids[i];
      b.writeBigUInt64LE(BigInt(this.mem.iova(s.off)), o + D.addr);
      b.writeUInt32LE(s.len, o + D.len);
      b.writeUInt16LE((s.write ? VRING_DESC_F.WRITE : 0) | (i + 1 < bufs.length ? VRING_DESC_F.NEXT : 0), o + D.flags);
      b.writeUInt16LE(i + 1 < bufs.length ? ids[i + 1] : 0, o + D.next);
    });
    b.writeUInt16LE(ids[0], this.avail + VRING_AVAIL.ring + 2 * (this.availIdx % this.num));
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.chainLen.set(ids[0], ids);
    return ids[0];
  }
  publish(): void { this.mem.buf.writeUInt16LE(this.availIdx, this.avail + VRING_AVAIL.idx); }
  usedIdx(): number { return this.mem.buf.readUInt16LE(this.used + VRING_USED.idx); }
  /** Used elements since last time; their descriptors become free again. */
  collect(): { head: number; len: number }[] {
    const out: { head: number; len: number }[] = [];
    const idx = this.usedIdx();
    while (this.lastUsed !== idx) {
      const E = VRING_USED_ELEM, o = this.used + VRING_USED.ring + E.sizeof * (this.lastUsed % this.num);
      const head = this.mem.buf.readUInt32LE(o + E.id), len = this.mem.buf.readUInt32LE(o + E.len);
      out.push({ head, len });
      for (const id of this.chainLen.get(head) ?? []) this.free.push(id);
      this.chainLen.delete(head);
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
  iovas() { return { desc: BigInt(this.mem.iova(this.desc)), avail: BigInt(this.mem.iova(this.avail)), used: BigInt(this.mem.iova(this.used)) }; }
}

const one = Buffer.alloc(8);
one.writeBigUInt64LE(1n);
export const kick = (efd: number): void => { sysWrite('kick', efd, one); };
/** Drain a (non-blocking) call eventfd; returns the count. */
export function drainCall(efd: number): number {
  const b = Buffer.alloc(8);
  try { sysRead('call', efd, b); return Number(b.readBigUInt64LE()); } catch (e) {
    if (e instanceof SyscallError && e.code === 'EAGAIN') return 0;
    throw e;
  }
}
const sleepWord = new Int32Array(new SharedArrayBuffer(4));
/** Spin (with 50 µs naps) until cond() or timeout. */
export function waitFor(cond: () => boolean, timeoutMs = 2000): boolean {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) return false;
    Atomics.wait(sleepWord, 0, 0, 0.05);
  }
  return true;
}

export interface Queue { ring: DriverRing; kick: number; call: number }

/**
 * Bring a device up: SET_OWNER (unless owned), backend features, UPDATE of `mem`, the status walk
 * with queues configured, DRIVER_OK. Queue rings are laid out at the start of guest memory.
 */
export function bringUp(fd: number, mem: DriverMemory, nq: number, opts: { num?: number; owner?: boolean; update?: boolean; features?: bigint } = {}): Queue[] {
  const num = opts.num ?? 256;
  if (opts.owner !== false) vhost.setOwner(fd);
  const offered = vhost.getBackendFeatures(fd);
  vhost.setBackendFeatures(fd, offered & (BACKEND_F.IOTLB_MSG_V2 | BACKEND_F.IOTLB_BATCH | BACKEND_F.IOTLB_ASID | BACKEND_F.SUSPEND | BACKEND_F.RESUME));
  if (opts.update !== false) mem.update(fd);
  vhost.setStatus(fd, VIRTIO_STATUS.ACKNOWLEDGE);
  vhost.setStatus(fd, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER);
  vhost.setFeatures(fd, opts.features ?? (VIRTIO_F.VERSION_1 | VIRTIO_F.ACCESS_PLATFORM));
  vhost.setStatus(fd, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK);
  const qs: Queue[] = [];
  const stride = (DriverRing.bytes(num) + 4095) & ~4095;
  for (let i = 0; i < nq; i++) {
    const ring = new DriverRing(mem, i * stride, num);
    const k = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), c = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    vhost.setVringNum(fd, i, num);
    vhost.setVringAddr(fd, { index: i, flags: 0, ...ring.iovas(), log: 0n });
    vhost.setVringBase(fd, i, 0);
    vhost.setVringKick(fd, i, k);
    vhost.setVringCall(fd, i, c);
    vhost.setVringEnable(fd, i, true);
    qs.push({ ring, kick: k, call: c });
  }
  vhost.setStatus(fd, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK | VIRTIO_STATUS.DRIVER_OK);
  return qs;
}
export const ringArea = (nq: number, num = 256): number => nq * ((DriverRing.bytes(num) + 4095) & ~4095);
export function closeQueues(qs: Queue[]): void { for (const q of qs) { close(q.kick); close(q.call); } }
