// A virtio-blk device like vdpa_sim_blk (Linux 6.12): one request queue over a sparse RAM disk
// (128 MiB by default, the kernel's 0x40000 sectors). Requests: 16-byte header {type, ioprio,
// sector}, data, 1-byte status (OK 0, IOERR 1, UNSUPP 2). Types IN 0, OUT 1, FLUSH 4, GET_ID 8,
// DISCARD 11, WRITE_ZEROES 13; any other type is IOERR, as in the kernel.
import { openSync, closeSync, fstatSync, ftruncateSync, readSync, writeSync } from 'node:fs';
import { SimDevice, type SimProfile } from './sim.js';
import { popAvail, pushUsed, unpop, wantsInterrupt, type Chain } from './virtqueue.js';
import { clip } from './net.js';
import type { Dma, Seg } from './dma.js';

const SECTOR = 512, CHUNK = 64 * 1024, BATCH = 64;
const T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13;
const S_OK = 0, S_IOERR = 1, S_UNSUPP = 2;
const ID_BYTES = 20, ID = Buffer.alloc(ID_BYTES); // vdpasim_blk_id, zero-padded to VIRTIO_BLK_ID_BYTES
ID.write('vdpa_blk_sim');
const DWZ_MAX_SECTORS = 0xffffffff; // VDPASIM_BLK_DWZ_MAX_SECTORS (UINT_MAX)
const RW_MAX_SECTORS = 4096 * 32; // the kernel caps IN/OUT at size_max * seg_max, counted in sectors
const WRITE_ZEROES_FLAG_UNMAP = 1;

export function blkProfile(capacityBytes: number): SimProfile {
  // struct virtio_blk_config as in 6.12: 96 bytes, through the zoned fields (left 0).
  const config = Buffer.alloc(96);
  config.writeBigUInt64LE(BigInt(capacityBytes / SECTOR), 0); // capacity (sectors)
  config.writeUInt32LE(4096, 8); // size_max
  config.writeUInt32LE(32, 12); // seg_max
  config.writeUInt32LE(SECTOR, 20); // blk_size
  config.writeUInt16LE(1, 26); // topology: min_io_size (physical_block_exp, alignment_offset 0)
  config.writeUInt32LE(1, 28); // topology: opt_io_size
  config.writeUInt16LE(1, 34); // num_queues
  config.writeUInt32LE(DWZ_MAX_SECTORS, 36); // max_discard_sectors
  config.writeUInt32LE(1, 40); // max_discard_seg
  config.writeUInt32LE(SECTOR, 44); // discard_sector_alignment (the kernel's value, 512)
  config.writeUInt32LE(DWZ_MAX_SECTORS, 48); // max_write_zeroes_sectors
  config.writeUInt32LE(1, 52); // max_write_zeroes_seg; write_zeroes_may_unmap (56) stays 0
  // SIZE_MAX 1, SEG_MAX 2, BLK_SIZE 6, FLUSH 9, TOPOLOGY 10, MQ 12, DISCARD 13, WRITE_ZEROES 14,
  // ANY_LAYOUT 27, VERSION_1 32, ACCESS_PLATFORM 33: 0x308007646, as vdpasim_blk offers.
  const features = [1n, 2n, 6n, 9n, 10n, 12n, 13n, 14n, 27n, 32n, 33n].reduce((f, b) => f | (1n << b), 0n);
  return { deviceId: 2, features, vringMax: 256, nvqs: 1, nas: 1, ngroups: 1, vqGroup: () => 0, config };
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
    const hdr = dma.gather(clip(c.out, 16));
    if (!hdr || hdr.length !== 16) return { len: 0, handled: false };
    const type = hdr.readUInt32LE(0), sector = Number(hdr.readBigUInt64LE(8));
    const toPush = c.inLen - 1, toPull = c.outLen - 16;
    const dataIn = clip(c.in, toPush), dataOut = dropFirst(c.out, 16);
    let status = S_OK, pushed = 0;
    // vdpa_sim_blk fails every request but IN and OUT whose header sector isn't 0.
    if (type !== T_IN && type !== T_OUT && sector !== 0) status = S_IOERR;
    else switch (type) {
      case T_IN: {
        if (!this.rwInRange(sector, toPush)) { status = S_IOERR; break; }
        if (dma.scatter(dataIn, this.disk.read(sector * SECTOR, toPush))) { pushed = toPush; this.counters.blocksRead += Math.ceil(toPush / SECTOR); } else status = S_IOERR;
        break;
      }
      case T_OUT: {
        if (!this.rwInRange(sector, toPull)) { status = S_IOERR; break; }
        const data = dma.gather(dataOut);
        if (data) { this.disk.write(sector * SECTOR, data); this.counters.blocksWritten += Math.ceil(toPull / SECTOR); } else status = S_IOERR;
        break;
      }
      case T_FLUSH: break; // RAM: nothing to flush
      case T_GET_ID: {
        const n = Math.min(ID_BYTES, c.inLen);
        if (dma.scatter(c.in, ID.subarray(0, n))) pushed = n; else status = S_IOERR;
        break;
      }
      case T_DISCARD: case T_WRITE_ZEROES: {
        // Exactly one struct virtio_blk_discard_write_zeroes {le64 sector, le32 num_sectors,
        // le32 flags} (max_*_seg is 1); anything else is IOERR.
        const seg = toPull === 16 ? dma.gather(dataOut) : null;
        if (!seg) { status = S_IOERR; break; }
        const start = Number(seg.readBigUInt64LE(0)), n = seg.readUInt32LE(8), flags = seg.readUInt32LE(12);
        // Flags the type doesn't define are UNSUPP (checked before the range, as the kernel does).
        const allowed = type === T_WRITE_ZEROES ? WRITE_ZEROES_FLAG_UNMAP : 0;
        if (flags & ~allowed) { status = S_UNSUPP; break; }
        if (!this.inRange(start, n, DWZ_MAX_SECTORS)) { status = S_IOERR; break; }
        // DISCARD keeps the data (the kernel's does too); WRITE_ZEROES, with or without UNMAP, zeroes.
        if (type === T_WRITE_ZEROES) this.disk.zero(start * SECTOR, n * SECTOR);
        break;
      }
      default: status = S_IOERR; // vdpa_sim_blk answers unknown types IOERR, not UNSUPP
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
