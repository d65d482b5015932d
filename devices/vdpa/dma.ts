// How the simulated device reaches driver memory through the parent's view of an address space.
// - pa (like mlx5): every entry is backed by the daemon's own MAP_SHARED mapping of the file
//   behind the owner's memory, so DMA is a Buffer copy (no system call).
// - va (like vdpa_sim use_va): entries hold the owner's user virtual addresses; the device
//   reads/writes the address space it is bound to. Single ranges go through /proc/PID/mem opened
//   at bind time (it keeps referring to that mm after an exec, whose reads then fail, as the
//   kernel's bound mm would), scatter/gather through process_vm_readv/writev of the pid.
import { addressOf, bufferAt } from '../../src/libc.js';
import { preadRaw, pwriteRaw, processVmv, type Iov } from './sys.js';

/** One mapping as the parent sees it (a snapshot taken at set_map time). */
export interface MapView {
  start: number; last: number; // iova, inclusive
  addr: number; // va: user VA; pa: daemon mapping address
  perm: number; // VHOST_ACCESS_RO 1, WO 2, RW 3
  /** pa: 1 GiB windows onto the daemon's mapping, made on first use (a Buffer cannot exceed 4 GiB). */
  windows?: Buffer[];
}

const WINDOW = 2 ** 30;
/** The parts of [off, off+len) of a pa entry's mapping, as views (no copy); usually one. */
function paParts(m: MapView, off: number, len: number): Buffer[] {
  const size = m.last - m.start + 1;
  m.windows ??= [];
  const parts: Buffer[] = [];
  while (len > 0) {
    const w = Math.floor(off / WINDOW), o = off - w * WINDOW;
    const win = (m.windows[w] ??= bufferAt(m.addr + w * WINDOW, Math.min(WINDOW, size - w * WINDOW)));
    const n = Math.min(len, win.length - o);
    parts.push(win.subarray(o, o + n));
    off += n; len -= n;
  }
  return parts;
}
export interface Seg { addr: number; len: number } // an iova range

export interface Dma {
  /** Start of a processing batch: views returned earlier may be reused from here on. */
  begin(): void;
  /** Bytes at iova (a view, valid until the next begin()); null on a translation/access fault. */
  read(iova: number, len: number): Buffer | null;
  write(iova: number, data: Buffer): boolean;
  /** Concatenation of the segments (view valid until begin()). */
  gather(segs: Seg[]): Buffer | null;
  /** Write `data` across the segments in order (data may be shorter than the segments). */
  scatter(segs: Seg[], data: Buffer): boolean;
}

const RO = 1, WO = 2;

/** Split [iova, iova+len) into pieces, each inside one mapping with the needed permission. */
function translate(view: MapView[], iova: number, len: number, need: number, out: { m: MapView; off: number; len: number }[]): boolean {
  while (len > 0) {
    let m: MapView | undefined;
    for (const v of view) if (v.start <= iova && iova <= v.last) { m = v; break; }
    if (!m || (m.perm & need) === 0) return false;
    const n = Math.min(len, m.last - iova + 1);
    out.push({ m, off: iova - m.start, len: n });
    iova += n; len -= n;
  }
  return true;
}

export class PaDma implements Dma {
  constructor(private readonly view: () => MapView[]) {}
  begin(): void {}
  private pieces(iova: number, len: number, need: number) {
    const out: { m: MapView; off: number; len: number }[] = [];
    return translate(this.view(), iova, len, need, out) ? out : null;
  }
  read(iova: number, len: number): Buffer | null {
    const p = this.pieces(iova, len, RO);
    if (!p) return null;
    const parts = p.flatMap((x) => paParts(x.m, x.off, x.len));
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
  write(iova: number, data: Buffer): boolean {
    const p = this.pieces(iova, data.length, WO);
    if (!p) return false;
    let at = 0;
    for (const x of p) for (const part of paParts(x.m, x.off, x.len)) { data.copy(part, 0, at, at + part.length); at += part.length; }
    return true;
  }
  gather(segs: Seg[]): Buffer | null {
    const parts: Buffer[] = [];
    for (const s of segs) { const b = this.read(s.addr, s.len); if (!b) return null; parts.push(b); }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
  scatter(segs: Seg[], data: Buffer): boolean {
    let at = 0;
    for (const s of segs) {
      if (at >= data.length) break;
      const n = Math.min(s.len, data.length - at);
      if (!this.write(s.addr, data.subarray(at, at + n))) return false;
      at += n;
    }
    return true;
  }
}

/** The address space a VA parent is bound to (vdpa_sim bind_mm). */
export interface BoundMm { pid: number; memFd: number }

const SCRATCH = 4 << 20;

export class VaDma implements Dma {
  private readonly scratch = Buffer.alloc(SCRATCH);
  private readonly scratchAddr = addressOf(this.scratch);
  private pos = 0;
  constructor(private readonly view: () => MapView[], private readonly mm: () => BoundMm | null) {}
  begin(): void { this.pos = 0; }

  /** Room in the scratch area (or a fresh Buffer) with its address. */
  private room(len: number): { buf: Buffer; addr: number } {
    if (this.pos + len <= SCRATCH) {
      const buf = this.scratch.subarray(this.pos, this.pos + len);
      const addr = this.scratchAddr + this.pos;
      this.pos += (len + 7) & ~7;
      return { buf, addr };
    }
    const buf = Buffer.alloc(Math.max(len, 64));
    return { buf: buf.subarray(0, len), addr: addressOf(buf) };
  }
  /** Address of a Buffer's bytes, copying into the scratch area unless it already lives there. */
  private addrOf(data: Buffer): number {
    if (data.buffer === this.scratch.buffer) return this.scratchAddr + (data.byteOffset - this.scratch.byteOffset);
    const r = this.room(data.length);
    data.copy(r.buf);
    return r.addr;
  }
  private remote(segs: Seg[], need: number): { remote: number; len: number }[] | null {
    const out: { m: MapView; off: number; len: number }[] = [];
    for (const s of segs) if (!translate(this.view(), s.addr, s.len, need, out)) return null;
    return out.map((x) => ({ remote: x.m.addr + x.off, len: x.len }));
  }
  read(iova: number, len: number): Buffer | null {
    const mm = this.mm();
    const r = this.remote([{ addr: iova, len }], RO);
    if (!mm || !r) return null;
    const dst = this.room(len);
    let at = 0;
    for (const x of r) {
      if (preadRaw(mm.memFd, dst.addr + at, x.len, x.remote) !== x.len) return null;
      at += x.len;
    }
    return dst.buf;
  }
  write(iova: number, data: Buffer): boolean {
    const mm = this.mm();
    const r = this.remote([{ addr: iova, len: data.length }], WO);
    if (!mm || !r) return false;
    const src = this.addrOf(data);
    let at = 0;
    for (const x of r) {
      if (pwriteRaw(mm.memFd, src + at, x.len, x.remote) !== x.len) return false;
      at += x.len;
    }
    return true;
  }
  gather(segs: Seg[]): Buffer | null {
    const mm = this.mm();
    const r = this.remote(segs, RO);
    if (!mm || !r) return null;
    const total = r.reduce((a, x) => a + x.len, 0);
    const dst = this.room(total);
    const iovs: Iov[] = [];
    let at = 0;
    for (const x of r) { iovs.push({ local: dst.addr + at, remote: x.remote, len: x.len }); at += x.len; }
    return total === 0 || processVmv(false, mm.pid, iovs) === total ? dst.buf : null;
  }
  scatter(segs: Seg[], data: Buffer): boolean {
    const mm = this.mm();
    // Only as much of the segments as the data fills.
    const used: Seg[] = [];
    let left = data.length;
    for (const s of segs) { if (left <= 0) break; const n = Math.min(s.len, left); used.push({ addr: s.addr, len: n }); left -= n; }
    const r = this.remote(used, WO);
    if (!mm || !r) return false;
    const src = this.addrOf(data);
    const iovs: Iov[] = [];
    let at = 0;
    for (const x of r) { iovs.push({ local: src + at, remote: x.remote, len: x.len }); at += x.len; }
    return at === 0 || processVmv(true, mm.pid, iovs) === at;
  }
}
