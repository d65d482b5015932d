// Split virtqueues for the conformance suite, laid out in one shared memfd ("ring memory") that is
// entered in the device IOTLB at one IOVA. All driver state lives in that memory (avail/used indexes),
// so a process that re-maps the memfd after exec continues where the old image stopped.
//
// Layout (offsets in the memfd): queue q at q*0x4000: descriptor table +0, avail ring +0x1000,
// used ring +0x2000. Buffers from 0x10000 on, one 2 KiB slot per (queue, descriptor head).
import { read, write, SyscallError } from '../../src/libc.js';
import { vhost, VIRTIO_F, VIRTIO_STATUS as S } from '../../src/vhost.js';
import { VRING_AVAIL, VRING_DESC, VRING_DESC_F, VRING_USED, VRING_USED_ELEM } from '../../devices/vdpa/virtqueue.js';
import { VIRTIO_NET_F, VIRTIO_NET_HDR_V1 } from '../../devices/vdpa/net.js';
import { VIRTIO_BLK_OUTHDR, VIRTIO_BLK_S, VIRTIO_BLK_T } from '../../devices/vdpa/blk.js';

export const QSIZE = 64;
export const RING_MEM = 1 << 20;
const QSTRIDE = 0x4000, AVAIL = 0x1000, USED = 0x2000, DATA = 0x10000, SLOT = 2048;
const NET_HDR = VIRTIO_NET_HDR_V1.sizeof; // VERSION_1 is always negotiated
const BLK_HDR = VIRTIO_BLK_OUTHDR.sizeof;

export type Kind = 'net' | 'blk';
export const queuesOf = (kind: Kind): number[] => (kind === 'net' ? [0, 1] : [0]); // net: RX 0, TX 1

/** Features the suite negotiates: the offered ones among VERSION_1, ACCESS_PLATFORM (and MAC for net). */
export const wantedFeatures = (kind: Kind, offered: bigint): bigint =>
  offered & (VIRTIO_F.VERSION_1 | VIRTIO_F.ACCESS_PLATFORM | (kind === 'net' ? VIRTIO_NET_F.MAC : 0n));

export interface Vring { mem: Buffer; iova: bigint }

const u16 = (m: Buffer, off: number) => m.readUInt16LE(off);
export const availIdx = (r: Vring, q: number): number => u16(r.mem, q * QSTRIDE + AVAIL + VRING_AVAIL.idx);
export const usedIdx = (r: Vring, q: number): number => u16(r.mem, q * QSTRIDE + USED + VRING_USED.idx);

/** Zero the rings of every queue (a fresh driver). */
export function resetRings(r: Vring): void { r.mem.fill(0, 0, DATA); }

/** VHOST_SET_VRING_NUM/ADDR/BASE/KICK/CALL/ENABLE for queue q, addresses as IOVAs. */
export function configureQueue(fd: number, r: Vring, q: number, base: number, kick: number, call: number): void {
  const at = r.iova + BigInt(q * QSTRIDE);
  vhost.setVringNum(fd, q, QSIZE);
  vhost.setVringAddr(fd, { index: q, flags: 0, desc: at, avail: at + BigInt(AVAIL), used: at + BigInt(USED), log: 0n });
  vhost.setVringBase(fd, q, base);
  vhost.setVringKick(fd, q, kick);
  vhost.setVringCall(fd, q, call);
}

/** The virtio status walk to 0x0f with the queues configured from `bases` (reset-style restart). */
export function deviceUp(fd: number, kind: Kind, r: Vring, kicks: number[], calls: number[], bases: number[] = []): void {
  const offered = vhost.getFeatures(fd);
  vhost.setStatus(fd, S.ACKNOWLEDGE);
  vhost.setStatus(fd, S.ACKNOWLEDGE | S.DRIVER);
  vhost.setFeatures(fd, wantedFeatures(kind, offered));
  vhost.setStatus(fd, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
  for (const q of queuesOf(kind)) {
    configureQueue(fd, r, q, bases[q] ?? 0, kicks[q], calls[q]);
    vhost.setVringEnable(fd, q, true);
  }
  vhost.setStatus(fd, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
}

/** A buffer of a chain: offset in the ring memory, length, device-writable or not. */
export interface Seg { off: number; len: number; write: boolean }
/** Free room in the ring memory for cases that lay out their own buffers (below 0xf0000, used by fills). */
export const SCRATCH = 0x80000;

/** Put one descriptor chain (at most 4 buffers) on queue q's avail ring (not kicked). Returns the head index. */
export function post(r: Vring, q: number, segs: Seg[]): number {
  const base = q * QSTRIDE, idx = availIdx(r, q);
  const head = (idx * 4) % QSIZE; // up to 4 descriptors per chain
  segs.forEach((s, i) => {
    const D = VRING_DESC, d = base + (head + i) * D.sizeof;
    r.mem.writeBigUInt64LE(r.iova + BigInt(s.off), d + D.addr);
    r.mem.writeUInt32LE(s.len, d + D.len);
    r.mem.writeUInt16LE((s.write ? VRING_DESC_F.WRITE : 0) | (i < segs.length - 1 ? VRING_DESC_F.NEXT : 0), d + D.flags);
    r.mem.writeUInt16LE(head + i + 1, d + D.next);
  });
  r.mem.writeUInt16LE(head, base + AVAIL + VRING_AVAIL.ring + 2 * (idx % QSIZE));
  r.mem.writeUInt16LE((idx + 1) & 0xffff, base + AVAIL + VRING_AVAIL.idx);
  return head;
}
const slotOff = (q: number, head: number) => DATA + (q * QSIZE + head) * SLOT;

export function kick(efd: number): void {
  const b = Buffer.alloc(8); b.writeBigUInt64LE(1n); write('kick eventfd write', efd, b);
}
/** Read a non-blocking eventfd: its counter, or 0 when it was not signalled. */
export function drain(efd: number): number {
  const b = Buffer.alloc(8);
  try { read('call eventfd read', efd, b); return Number(b.readBigUInt64LE()); } catch (e) {
    if (e instanceof SyscallError && e.errno === 11) return 0; // EAGAIN: not signalled
    throw e;
  }
}
const sleeper = new Int32Array(new SharedArrayBuffer(4));
export const sleepMs = (ms: number): void => { Atomics.wait(sleeper, 0, 0, ms); };

/** Wait until used.idx of queue q reaches `target` (mod 2^16). */
export function waitUsed(r: Vring, q: number, target: number, timeoutMs = 3000): boolean {
  const end = Date.now() + timeoutMs;
  while (usedIdx(r, q) !== (target & 0xffff)) {
    if (Date.now() > end) return false;
    sleepMs(1);
  }
  return true;
}
/** Wait for a call eventfd to be signalled. */
export function waitCall(efd: number, timeoutMs = 3000): boolean {
  const end = Date.now() + timeoutMs;
  while (drain(efd) === 0) { if (Date.now() > end) return false; sleepMs(1); }
  return true;
}
export const usedElem = (r: Vring, q: number, i: number): { id: number; len: number } => {
  const E = VRING_USED_ELEM, o = q * QSTRIDE + USED + VRING_USED.ring + E.sizeof * (i % QSIZE);
  return { id: r.mem.readUInt32LE(o + E.id), len: r.mem.readUInt32LE(o + E.len) };
};

// ---- net: a TX frame loops back to RX (vdpa_sim_net semantics) ----

/** An Ethernet broadcast frame of 96 bytes whose payload depends on n. */
export function frame(n: number): Buffer {
  const f = Buffer.alloc(96);
  f.fill(0xff, 0, 6);
  Buffer.from([0x02, 0, 0, 0, 0, 0x01]).copy(f, 6);
  f.writeUInt16BE(0x88b5, 12);
  for (let i = 14; i < f.length; i++) f[i] = (n * 31 + i) & 0xff;
  return f;
}

export interface Pending { kind: Kind; n: number; q: number[]; used0: number[]; heads: number[] }

/** Post an RX buffer and a TX frame and kick both queues; does not wait. */
export function netSend(r: Vring, kicks: number[], n: number): Pending {
  const used0 = [usedIdx(r, 0), usedIdx(r, 1)];
  const rxHead = (availIdx(r, 0) * 4) % QSIZE;
  r.mem.fill(0, slotOff(0, rxHead), slotOff(0, rxHead) + SLOT);
  post(r, 0, [{ off: slotOff(0, rxHead), len: SLOT, write: true }]);
  kick(kicks[0]);
  const txHead = (availIdx(r, 1) * 4) % QSIZE, f = frame(n), off = slotOff(1, txHead);
  r.mem.fill(0, off, off + NET_HDR);
  f.copy(r.mem, off + NET_HDR);
  post(r, 1, [{ off, len: NET_HDR + f.length, write: false }]);
  kick(kicks[1]);
  return { kind: 'net', n, q: [0, 1], used0, heads: [rxHead, txHead] };
}

/** Wait for a pending request to complete and check its bytes; returns null or what went wrong. */
export function complete(r: Vring, calls: number[], p: Pending, timeoutMs = 3000): string | null {
  if (p.kind === 'net') {
    if (!waitUsed(r, 1, p.used0[1] + 1, timeoutMs)) return `TX used index stayed ${usedIdx(r, 1)} (want ${(p.used0[1] + 1) & 0xffff})`;
    if (!waitUsed(r, 0, p.used0[0] + 1, timeoutMs)) return `RX used index stayed ${usedIdx(r, 0)} (frame not looped back)`;
    const e = usedElem(r, 0, p.used0[0]), f = frame(p.n);
    if (e.id !== p.heads[0]) return `RX used id ${e.id}, want ${p.heads[0]}`;
    if (e.len !== NET_HDR + f.length) return `RX used len ${e.len}, want ${NET_HDR + f.length}`;
    const got = r.mem.subarray(slotOff(0, p.heads[0]) + NET_HDR, slotOff(0, p.heads[0]) + NET_HDR + f.length);
    if (!got.equals(f)) return 'RX frame bytes differ from the TX frame';
    if (!waitCall(calls[0], timeoutMs)) return `RX call eventfd not signalled (TX call ${drain(calls[1]) ? 'was' : 'was not'} signalled)`;
    drain(calls[1]);
    return null;
  }
  if (!waitUsed(r, 0, p.used0[0] + 1, timeoutMs)) return `blk used index stayed ${usedIdx(r, 0)}`;
  const off = slotOff(0, p.heads[0]);
  const status = r.mem[off + BLK_HDR + 512];
  if (status !== VIRTIO_BLK_S.OK) return `blk request status ${status}`;
  if (!waitCall(calls[0], timeoutMs)) return 'blk call eventfd not signalled';
  return null;
}

// ---- blk: one sector written, then read back ----
const { OUT: BLK_OUT, IN: BLK_IN } = VIRTIO_BLK_T;
const sector = (n: number) => { const b = Buffer.alloc(512); for (let i = 0; i < 512; i++) b[i] = (n * 7 + i) & 0xff; return b; };

export function blkSend(r: Vring, kicks: number[], n: number, type: number = BLK_OUT): Pending {
  const used0 = [usedIdx(r, 0)];
  const head = (availIdx(r, 0) * 4) % QSIZE, off = slotOff(0, head);
  r.mem.fill(0, off, off + SLOT);
  r.mem.writeUInt32LE(type, off + VIRTIO_BLK_OUTHDR.type); r.mem.writeBigUInt64LE(BigInt(n % 64), off + VIRTIO_BLK_OUTHDR.sector);
  if (type === BLK_OUT) sector(n).copy(r.mem, off + BLK_HDR);
  r.mem[off + BLK_HDR + 512] = 0xff;
  post(r, 0, [{ off, len: BLK_HDR, write: false }, { off: off + BLK_HDR, len: 512, write: type === BLK_IN }, { off: off + BLK_HDR + 512, len: 1, write: true }]);
  kick(kicks[0]);
  return { kind: 'blk', n, q: [0], used0, heads: [head] };
}

/** One full round trip: a frame through net, or a sector write + read-back through blk. */
export function roundTrip(kind: Kind, r: Vring, kicks: number[], calls: number[], n: number): string | null {
  if (kind === 'net') return complete(r, calls, netSend(r, kicks, n));
  const w = complete(r, calls, blkSend(r, kicks, n, BLK_OUT));
  if (w) return `write: ${w}`;
  const p = blkSend(r, kicks, n, BLK_IN);
  const rd = complete(r, calls, p);
  if (rd) return `read: ${rd}`;
  const got = r.mem.subarray(slotOff(0, p.heads[0]) + BLK_HDR, slotOff(0, p.heads[0]) + BLK_HDR + 512);
  return got.equals(sector(n)) ? null : 'blk read-back differs from the sector written';
}

/** Send without waiting (for "nothing moves while suspended" checks). */
export const send = (kind: Kind, r: Vring, kicks: number[], n: number): Pending =>
  kind === 'net' ? netSend(r, kicks, n) : blkSend(r, kicks, n, BLK_OUT);
