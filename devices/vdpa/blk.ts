// A virtio-blk device like vdpa_sim_blk (Linux 6.12): one request queue over a sparse RAM disk
// (128 MiB by default, the kernel's 0x40000 sectors). Requests: 16-byte header {type, ioprio,
// sector}, data, 1-byte status (OK 0, IOERR 1, UNSUPP 2). Types IN 0, OUT 1, FLUSH 4, GET_ID 8,
// DISCARD 11, WRITE_ZEROES 13; any other type is IOERR, as in the kernel.
import { openSync, closeSync, fstatSync, ftruncateSync, readSync, writeSync } from 'node:fs';
import { SimDevice, type SimProfile } from './sim.js';
import { popAvail, pushUsed, unpop, wantsInterrupt, type Chain } from './virtqueue.js';
import { clip } from './net.js';
import { VIRTIO_F, VIRTIO_ID } from '../../src/vhost.js';
import type { Dma, Seg } from './dma.js';

// virtio-blk as linux/virtio_blk.h defines it; tools/layout-check.mjs checks every entry.
/** Request types VIRTIO_BLK_T_<name> and statuses VIRTIO_BLK_S_<name>. */
export const VIRTIO_BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const VIRTIO_BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
/** Feature bits (masks): VIRTIO_BLK_F_<name>. */
export const VIRTIO_BLK_F = {
  SIZE_MAX: 1n << 1n, SEG_MAX: 1n << 2n, BLK_SIZE: 1n << 6n, FLUSH: 1n << 9n, TOPOLOGY: 1n << 10n, MQ: 1n << 12n,
  DISCARD: 1n << 13n, WRITE_ZEROES: 1n << 14n,
} as const;
export const VIRTIO_BLK_ID_BYTES = 20;
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** The request header (struct virtio_blk_outhdr); data and a 1-byte status follow it. */
export const VIRTIO_BLK_OUTHDR = { type: 0, ioprio: 4, sector: 8, sizeof: 16 } as const;
/** The one segment a DISCARD or WRITE_ZEROES carries. */
export const VIRTIO_BLK_DISCARD_WRITE_ZEROES = { sector: 0, num_sectors: 8, flags: 12, sizeof: 16 } as const;
/** struct virtio_blk_config as in 6.12: 96 bytes, through the zoned fields (left 0). */
export const VIRTIO_BLK_CONFIG = {
  capacity: 0, size_max: 8, seg_max: 12, blk_size: 20, physical_block_exp: 24, alignment_offset: 25, min_io_size: 26,
  opt_io_size: 28, num_queues: 34, max_discard_sectors: 36, max_discard_seg: 40, discard_sector_alignment: 44,
  max_write_zeroes_sectors: 48, max_write_zeroes_seg: 52, write_zeroes_may_unmap: 56, sizeof: 96,
} as const;

const T = VIRTIO_BLK_T, S = VIRTIO_BLK_S;
const SECTOR = 512, CHUNK = 64 * 1024, BATCH = 64;
const ID = Buffer.alloc(VIRTIO_BLK_ID_BYTES); // vdpasim_blk_id, zero-padded
ID.write('vdpa_blk_sim');
const DWZ_MAX_SECTORS = 0xffffffff; // VDPASIM_BLK_DWZ_MAX_SECTORS (UINT_MAX)
const RW_MAX_SECTORS = 4096 * 32; // the kernel caps IN/OUT at size_max * seg_max, counted in sectors

export function blkProfile(capacityBytes: number): SimProfile {
  const C = VIRTIO_BLK_CONFIG, config = Buffer.alloc(C.sizeof);
  config.writeBigUInt64LE(BigInt(capacityBytes / SECTOR), C.capacity); // in sectors
  config.writeUInt32LE(4096, C.size_max);
  config.writeUInt32LE(32, C.seg_max);
  config.writeUInt32LE(SECTOR, C.blk_size);
  config.writeUInt16LE(1, C.min_io_size); // topology (physical_block_exp, alignment_offset 0)
  config.writeUInt32LE(1, C.opt_io_size);
  config.writeUInt16LE(1, C.num_queues);
  config.writeUInt32LE(DWZ_MAX_SECTORS, C.max_discard_sectors);
  config.writeUInt32LE(1, C.max_discard_seg);
  config.writeUInt32LE(SECTOR, C.discard_sector_alignment); // the kernel's value, 512
  config.writeUInt32LE(DWZ_MAX_SECTORS, C.max_write_zeroes_sectors);
  config.writeUInt32LE(1, C.max_write_zeroes_seg); // write_zeroes_may_unmap stays 0
  const F = VIRTIO_BLK_F, features = F.SIZE_MAX | F.SEG_MAX | F.BLK_SIZE | F.FLUSH | F.TOPOLOGY | F.MQ | F.DISCARD |
    F.WRITE_ZEROES | VIRTIO_F.ANY_LAYOUT | VIRTIO_F.VERSION_1 | VIRTIO_F.ACCESS_PLATFORM; // 0x308007646, as vdpasim_blk offers
  return { deviceId: VIRTIO_ID.BLOCK, features, vringMax: 256, nvqs: 1, nas: 1, ngroups: 1, vqGroup: () => 0, config };
}

export class BlkDevice extends SimDevice {
  /** `backing`: a file that keeps the sectors across daemon restarts; RAM (as vdpa_sim_blk) by default. */
  constructor(backing?: string, readonly capacity = 128 << 20) {
    super(blkProfile(capacity));
    this.disk = backing ? new FileDisk(backing, capacity) : new RamDisk();
  }
  private readonly disk: Disk;

  protected work(): boolean {
    const vq = this.vqs[0];
    if (!vq.ready) return false;
    const dma = this.dmaFor(0);
    dma.begin();
    const { chains, flags } = popAvail(dma, vq, BATCH);
    if (!chains.length) return false;
    const used: number[] = [];
    let handled = 0;
    for (const c of chains) {
      const r = this.request(dma, c);
      used.push(c.head, r.len);
      if (!r.handled) break; // the kernel stops here until the next kick, without an interrupt for it
      handled++;
    }
    unpop(vq, chains.length - used.length / 2);
    pushUsed(dma, vq, used);
    if (handled && wantsInterrupt(flags)) this.signal(vq);
    return handled === BATCH;
  }

  /**
   * One request, as vdpasim_blk_handle_req: returns the used length and whether it was handled
   * (its status byte written). A request without a device-readable and a device-writable part, a
   * zero-length last buffer or a header shorter than 16 bytes is completed with length 0 and not
   * handled; so is one whose status byte found no room (a GET_ID into fewer than 20 data bytes:
   * the 20-byte ID is pushed over the whole writable part, status byte included).
   */
  private request(dma: Dma, c: Chain): { len: number; handled: boolean } {
    const last = c.in[c.in.length - 1];
    if (!c.out.length || !last || last.len < 1) return { len: 0, handled: false };
    const H = VIRTIO_BLK_OUTHDR, hdr = dma.gather(clip(c.out, H.sizeof));
    if (!hdr || hdr.length !== H.sizeof) return { len: 0, handled: false };
    const type = hdr.readUInt32LE(H.type), sector = Number(hdr.readBigUInt64LE(H.sector));
    const toPush = c.inLen - 1, toPull = c.outLen - H.sizeof;
    const dataIn = clip(c.in, toPush), dataOut = dropFirst(c.out, H.sizeof);
    let status: number = S.OK, pushed = 0;
    // vdpa_sim_blk fails every request but IN and OUT whose header sector isn't 0.
    if (type !== T.IN && type !== T.OUT && sector !== 0) status = S.IOERR;
    else switch (type) {
      case T.IN: {
        if (!this.rwInRange(sector, toPush)) { status = S.IOERR; break; }
        if (dma.scatter(dataIn, this.disk.read(sector * SECTOR, toPush))) { pushed = toPush; this.counters.blocksRead += Math.ceil(toPush / SECTOR); } else status = S.IOERR;
        break;
      }
      case T.OUT: {
        if (!this.rwInRange(sector, toPull)) { status = S.IOERR; break; }
        const data = dma.gather(dataOut);
        if (data) { this.disk.write(sector * SECTOR, data); this.counters.blocksWritten += Math.ceil(toPull / SECTOR); } else status = S.IOERR;
        break;
      }
      case T.FLUSH: break; // RAM: nothing to flush
      case T.GET_ID: {
        const n = Math.min(VIRTIO_BLK_ID_BYTES, c.inLen);
        if (dma.scatter(c.in, ID.subarray(0, n))) pushed = n; else status = S.IOERR;
        break;
      }
      case T.DISCARD: case T.WRITE_ZEROES: {
        // Exactly one struct virtio_blk_discard_write_zeroes {le64 sector, le32 num_sectors,
        // le32 flags} (max_*_seg is 1); anything else is IOERR.
        const D = VIRTIO_BLK_DISCARD_WRITE_ZEROES, seg = toPull === D.sizeof ? dma.gather(dataOut) : null;
        if (!seg) { status = S.IOERR; break; }
        const start = Number(seg.readBigUInt64LE(D.sector)), n = seg.readUInt32LE(D.num_sectors), flags = seg.readUInt32LE(D.flags);
        // Flags the type doesn't define are UNSUPP (checked before the range, as the kernel does).
        const allowed = type === T.WRITE_ZEROES ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
        if (flags & ~allowed) { status = S.UNSUPP; break; }
        if (!this.inRange(start, n, DWZ_MAX_SECTORS)) { status = S.IOERR; break; }
        // DISCARD keeps the data (the kernel's does too); WRITE_ZEROES, with or without UNMAP, zeroes.
        if (type === T.WRITE_ZEROES) this.disk.zero(start * SECTOR, n * SECTOR);
        break;
      }
      default: status = S.IOERR; // vdpa_sim_blk answers unknown types IOERR, not UNSUPP
    }
    // The status goes in the last byte, after the unused rest of the data buffers; a GET_ID that
    // filled them all (and the status byte) leaves no room (the kernel's size_t difference wraps).
    if (pushed > toPush || !dma.write(last.addr + last.len - 1, Buffer.from([status]))) return { len: pushed, handled: false };
    return { len: pushed + 1, handled: true };
  }

  /** vdpasim_blk_check_range: the start inside the disk, at most `max` sectors, the end not past it. */
  private inRange(start: number, sectors: number, max: number): boolean {
    const capacity = this.capacity / SECTOR;
    return start < capacity && sectors <= max && sectors <= capacity - start;
  }

  /**
   * IN/OUT: the kernel checks the range with the length rounded down to whole sectors, then copies
   * every byte (a partial sector is served). Where those bytes would run past the disk, its copy
   * overruns its buffer: refused here (IOERR).
   */
  private rwInRange(sector: number, bytes: number): boolean {
    return this.inRange(sector, Math.floor(bytes / SECTOR), RW_MAX_SECTORS) && sector * SECTOR + bytes <= this.capacity;
  }

  override destroy(): void { this.disk.close(); }
}

/** Where a blk device keeps its sectors. */
export interface Disk {
  read(off: number, len: number): Buffer;
  write(off: number, data: Buffer): void;
  zero(off: number, len: number): void;
  close(): void;
}

/** vdpa_sim_blk's storage: RAM, sparse in chunks; gone with the process. */
export class RamDisk implements Disk {
  private readonly chunks = new Map<number, Buffer>();
  close(): void { this.chunks.clear(); }
  /** Zeroes [off, off + len): whole chunks are dropped (they read back as zeros), parts cleared. */
  zero(off: number, len: number): void {
    for (let at = 0; at < len;) {
      const ci = Math.floor((off + at) / CHUNK), co = (off + at) % CHUNK, n = Math.min(CHUNK - co, len - at);
      if (n === CHUNK) this.chunks.delete(ci);
      else this.chunks.get(ci)?.fill(0, co, co + n);
      at += n;
    }
  }
  read(off: number, len: number): Buffer {
    const out = Buffer.alloc(len);
    for (let at = 0; at < len;) {
      const ci = Math.floor((off + at) / CHUNK), co = (off + at) % CHUNK, n = Math.min(CHUNK - co, len - at);
      this.chunks.get(ci)?.copy(out, at, co, co + n);
      at += n;
    }
    return out;
  }
  write(off: number, data: Buffer): void {
    for (let at = 0; at < data.length;) {
      const ci = Math.floor((off + at) / CHUNK), co = (off + at) % CHUNK, n = Math.min(CHUNK - co, data.length - at);
      let c = this.chunks.get(ci);
      if (!c) { c = Buffer.alloc(CHUNK); this.chunks.set(ci, c); }
      data.copy(c, co, at, at + n);
      at += n;
    }
  }
}

/**
 * A (sparse) file: the sectors outlive the daemon, so a restarted one serves the same disk (as a
 * vhost-user-blk back end over an image would). pread/pwrite per request.
 */
export class FileDisk implements Disk {
  private readonly fd: number;
  constructor(path: string, capacity: number) {
    closeSync(openSync(path, 'a')); // created if missing, never truncated
    this.fd = openSync(path, 'r+');
    if (fstatSync(this.fd).size < capacity) ftruncateSync(this.fd, capacity);
  }
  read(off: number, len: number): Buffer {
    const out = Buffer.alloc(len);
    for (let at = 0; at < len;) { const n = readSync(this.fd, out, at, len - at, off + at); if (n <= 0) break; at += n; }
    return out;
  }
  write(off: number, data: Buffer): void {
    for (let at = 0; at < data.length;) at += writeSync(this.fd, data, at, data.length - at, off + at);
  }
  zero(off: number, len: number): void { this.write(off, Buffer.alloc(len)); }
  close(): void { closeSync(this.fd); }
}

function dropFirst(segs: Seg[], n: number): Seg[] {
  const out: Seg[] = [];
  for (const s of segs) {
    if (n >= s.len) { n -= s.len; continue; }
    out.push({ addr: s.addr + n, len: s.len - n }); n = 0;
  }
  return out;
}
