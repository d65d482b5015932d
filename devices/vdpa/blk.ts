// A virtio-blk device like vdpa_sim_blk: one request queue over a sparse RAM disk (128 MiB by
// default). Requests: 16-byte header {type, reserved, sector}, data, 1-byte status (OK 0,
// IOERR 1, UNSUPP 2). Types IN 0, OUT 1, FLUSH 4, GET_ID 8.
import { SimDevice, type SimProfile } from './sim.js';
import { popAvail, pushUsed, wantsInterrupt, type Chain } from './virtqueue.js';
import { clip } from './net.js';
import type { Dma, Seg } from './dma.js';

const SECTOR = 512, CHUNK = 64 * 1024, BATCH = 64;
const T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8;
const S_OK = 0, S_IOERR = 1, S_UNSUPP = 2;
const ID = 'minivmm-vdpa-blk';

export function blkProfile(capacityBytes: number): SimProfile {
  const config = Buffer.alloc(60); // struct virtio_blk_config up to write_zeroes_may_unmap
  config.writeBigUInt64LE(BigInt(capacityBytes / SECTOR), 0); // capacity (sectors)
  config.writeUInt32LE(4096, 8); // size_max
  config.writeUInt32LE(32, 12); // seg_max
  config.writeUInt32LE(SECTOR, 20); // blk_size
  config.writeUInt16LE(1, 34); // num_queues
  // SIZE_MAX 1, SEG_MAX 2, BLK_SIZE 6, FLUSH 9, ANY_LAYOUT 27, VERSION_1 32, ACCESS_PLATFORM 33
  const features = (1n << 1n) | (1n << 2n) | (1n << 6n) | (1n << 9n) | (1n << 27n) | (1n << 32n) | (1n << 33n);
  return { deviceId: 2, features, vringMax: 256, nvqs: 1, nas: 1, ngroups: 1, vqGroup: () => 0, config };
}

export class BlkDevice extends SimDevice {
  private readonly chunks = new Map<number, Buffer>();
  constructor(readonly capacity = 128 << 20) { super(blkProfile(capacity)); }

  protected work(): boolean {
    const vq = this.vqs[0];
    if (!vq.ready) return false;
    const dma = this.dmaFor(0);
    dma.begin();
    const { chains, flags } = popAvail(dma, vq, BATCH);
    if (!chains.length) return false;
    const used: number[] = [];
    for (const c of chains) used.push(c.head, this.request(dma, c));
    pushUsed(dma, vq, used);
    if (wantsInterrupt(flags)) this.signal(vq);
    return chains.length === BATCH;
  }

  /** One request; returns the number of bytes written to device-writable buffers. */
  private request(dma: Dma, c: Chain): number {
    const last = c.in[c.in.length - 1];
    if (!last || c.outLen < 16) return 0; // malformed: nothing to answer into
    const statusSeg: Seg = { addr: last.addr + last.len - 1, len: 1 };
    const dataIn = clip(c.in, c.inLen - 1);
    const hdr = dma.gather(clip(c.out, 16));
    let status = S_IOERR, written = 0;
    if (hdr) {
      const type = hdr.readUInt32LE(0), sector = Number(hdr.readBigUInt64LE(8));
      const outData = dropFirst(c.out, 16);
      const outLen = c.outLen - 16, inLen = c.inLen - 1;
      switch (type) {
        case T_IN:
          if (this.inRange(sector, inLen)) {
            if (dma.scatter(dataIn, this.readDisk(sector * SECTOR, inLen))) { status = S_OK; written = inLen; this.counters.blocksRead += inLen / SECTOR; }
          }
          break;
        case T_OUT:
          if (this.inRange(sector, outLen)) {
            const data = dma.gather(outData);
            if (data) { this.writeDisk(sector * SECTOR, data); status = S_OK; this.counters.blocksWritten += outLen / SECTOR; }
          }
          break;
        case T_FLUSH: status = S_OK; break;
        case T_GET_ID: {
          const id = Buffer.alloc(Math.min(20, inLen));
          Buffer.from(ID).copy(id);
          if (dma.scatter(dataIn, id)) { status = S_OK; written = id.length; }
          break;
        }
        default: status = S_UNSUPP;
      }
    }
    if (!dma.write(statusSeg.addr, Buffer.from([status]))) return written;
    return written + 1;
  }

  private inRange(sector: number, len: number): boolean {
    return len % SECTOR === 0 && sector * SECTOR + len <= this.capacity;
  }
  private readDisk(off: number, len: number): Buffer {
    const out = Buffer.alloc(len);
    for (let at = 0; at < len;) {
      const ci = Math.floor((off + at) / CHUNK), co = (off + at) % CHUNK, n = Math.min(CHUNK - co, len - at);
      this.chunks.get(ci)?.copy(out, at, co, co + n);
      at += n;
    }
    return out;
  }
  private writeDisk(off: number, data: Buffer): void {
    for (let at = 0; at < data.length;) {
      const ci = Math.floor((off + at) / CHUNK), co = (off + at) % CHUNK, n = Math.min(CHUNK - co, data.length - at);
      let c = this.chunks.get(ci);
      if (!c) { c = Buffer.alloc(CHUNK); this.chunks.set(ci, c); }
      data.copy(c, co, at, at + n);
      at += n;
    }
  }
}

function dropFirst(segs: Seg[], n: number): Seg[] {
  const out: Seg[] = [];
  for (const s of segs) {
    if (n >= s.len) { n -= s.len; continue; }
    out.push({ addr: s.addr + n, len: s.len - n }); n = 0;
  }
  return out;
}
