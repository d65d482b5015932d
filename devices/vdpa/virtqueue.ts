// Split virtqueues (virtio 1.x, §2.7) from the device side, over a Dma. No EVENT_IDX, no
// indirect descriptors (neither is offered). State mirrors vdpa_sim's vringh: last_avail_idx,
// last_used_idx; a queue made ready starts with used = avail (vdpasim_queue_ready).
import type { Dma, Seg } from './dma.js';

// The split ring as linux/virtio_ring.h lays it out; tools/layout-check.mjs checks every entry.
// A table per struct (offsets by C field name, `sizeof`); the avail ring holds u16 heads.
export const VRING_DESC = { addr: 0, len: 8, flags: 12, next: 14, sizeof: 16 } as const;
export const VRING_AVAIL = { flags: 0, idx: 2, ring: 4 } as const;
export const VRING_USED = { flags: 0, idx: 2, ring: 4 } as const;
export const VRING_USED_ELEM = { id: 0, len: 4, sizeof: 8 } as const;
/** vring_desc.flags: VRING_DESC_F_<name>. */
export const VRING_DESC_F = { NEXT: 1, WRITE: 2, INDIRECT: 4 } as const;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const VRING_USED_ALIGN_SIZE = 4;

export class Vq {
  ready = false;
  num = 0; // set_vq_num
  desc = 0; driver = 0; device = 0; // set_vq_address (iovas)
  lastAvail = 0; // vringh last_avail_idx
  usedIdx = 0; // vringh last_used_idx
  callFd: number | null = null; // set_vq_cb trigger (the daemon's dup of the call eventfd)
  reset(): void {
    this.ready = false; this.desc = this.driver = this.device = 0;
    this.lastAvail = 0; this.usedIdx = 0; this.callFd = null;
  }
  /** vdpasim_queue_ready: the queue (re)starts with used = avail. */
  start(): void { this.usedIdx = this.lastAvail; }
}

export interface Chain { head: number; out: Seg[]; in: Seg[]; outLen: number; inLen: number }
export class RingError extends Error {}

/** The batch of chains the driver made available since last time (at most `max`). */
export function popAvail(dma: Dma, vq: Vq, max: number): { chains: Chain[]; flags: number } {
  const hdr = dma.read(vq.driver, VRING_AVAIL.ring);
  if (!hdr) throw new RingError('Failed to access avail idx');
  const flags = hdr.readUInt16LE(VRING_AVAIL.flags), idx = hdr.readUInt16LE(VRING_AVAIL.idx);
  const pending = (idx - vq.lastAvail) & 0xffff;
  if (pending > vq.num) throw new RingError(`Guest moved avail index from ${vq.lastAvail} to ${idx}`);
  const n = Math.min(pending, max);
  if (n === 0) return { chains: [], flags };
  const heads: number[] = [];
  let start = vq.lastAvail % vq.num, left = n;
  while (left > 0) {
    const k = Math.min(left, vq.num - start);
    const ring = dma.read(vq.driver + VRING_AVAIL.ring + 2 * start, 2 * k);
    if (!ring) throw new RingError('Failed to read avail ring');
    for (let i = 0; i < k; i++) heads.push(ring.readUInt16LE(2 * i));
    left -= k; start = 0;
  }
  const table = dma.read(vq.desc, VRING_DESC.sizeof * vq.num);
  if (!table) throw new RingError('Failed to read descriptor table');
  const chains = heads.map((h) => walk(table, h, vq.num));
  vq.lastAvail = (vq.lastAvail + n) & 0xffff;
  return { chains, flags };
}

/** Gives back the last `n` chains popAvail took (the device stopped before them). */
export function unpop(vq: Vq, n: number): void { vq.lastAvail = (vq.lastAvail - n) & 0xffff; }

function walk(table: Buffer, head: number, num: number): Chain {
  const c: Chain = { head, out: [], in: [], outLen: 0, inLen: 0 };
  let i = head;
  for (let count = 0; ; count++) {
    if (i >= num) throw new RingError(`Descriptor index ${i} out of range`);
    if (count >= num) throw new RingError('Descriptor chain loops');
    const D = VRING_DESC, o = D.sizeof * i;
    const addr = Number(table.readBigUInt64LE(o + D.addr)), len = table.readUInt32LE(o + D.len);
    const flags = table.readUInt16LE(o + D.flags), next = table.readUInt16LE(o + D.next);
    if (flags & VRING_DESC_F.INDIRECT) throw new RingError('Indirect descriptor not negotiated');
    if (flags & VRING_DESC_F.WRITE) { c.in.push({ addr, len }); c.inLen += len; }
    else {
      if (c.in.length) throw new RingError('Descriptor has out after in');
      c.out.push({ addr, len }); c.outLen += len;
    }
    if (!(flags & VRING_DESC_F.NEXT)) return c;
    i = next;
  }
}

/** Publish used elements [head, len, head, len, ...] and the new used index. */
export function pushUsed(dma: Dma, vq: Vq, elems: number[]): void {
  const n = elems.length / 2;
  if (n === 0) return;
  let start = vq.usedIdx % vq.num, at = 0;
  while (at < n) {
    const k = Math.min(n - at, vq.num - start);
    const E = VRING_USED_ELEM, b = Buffer.alloc(E.sizeof * k);
    for (let i = 0; i < k; i++) { b.writeUInt32LE(elems[2 * (at + i)], E.sizeof * i + E.id); b.writeUInt32LE(elems[2 * (at + i) + 1], E.sizeof * i + E.len); }
    if (!dma.write(vq.device + VRING_USED.ring + E.sizeof * start, b)) throw new RingError('Failed to write used ring');
    at += k; start = 0;
  }
  vq.usedIdx = (vq.usedIdx + n) & 0xffff;
  const idx = Buffer.alloc(2);
  idx.writeUInt16LE(vq.usedIdx);
  if (!dma.write(vq.device + VRING_USED.idx, idx)) throw new RingError('Failed to write used idx');
}

/** Whether the driver wants an interrupt (no EVENT_IDX: the avail flags decide). */
export const wantsInterrupt = (availFlags: number): boolean => (availFlags & VRING_AVAIL_F_NO_INTERRUPT) === 0;
