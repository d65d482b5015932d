// A minimal FUSE server speaking the kernel protocol (include/uapi/linux/fuse.h) directly over
// /dev/fuse: a flat root directory of files. Requests are answered one at a time, in order, by
// the daemon's single event-loop thread. Ioctls on a plain FUSE mount are "restricted": the kernel
// moves exactly _IOC_SIZE bytes in and out, and fuse_ioctl_in.arg is the caller's pointer.
import { constants } from 'node:os';
import { addressOf, mount, open as sysOpen, O_RDWR, O_CLOEXEC, O_NONBLOCK } from '../../src/libc.js';
import { readRaw, writeRaw, EAGAIN, EINTR, ENOENT, ENODEV } from './sys.js';
import { Errno } from './device.js';

const E = constants.errno;

// opcodes
const LOOKUP = 1, FORGET = 2, GETATTR = 3, SETATTR = 4, OPEN = 14, READ = 15, WRITE = 16, STATFS = 17,
  RELEASE = 18, FSYNC = 20, GETXATTR = 22, LISTXATTR = 23, FLUSH = 25, INIT = 26, OPENDIR = 27, READDIR = 28,
  RELEASEDIR = 29, FSYNCDIR = 30, ACCESS = 34, INTERRUPT = 36, DESTROY = 38, IOCTL = 39, POLL = 40,
  BATCH_FORGET = 42, READDIRPLUS = 44, LSEEK = 46;
const FOPEN_DIRECT_IO = 1;
const S_IFDIR = 0o040000, S_IFREG = 0o100000;
const IN_HEADER = 40, OUT_HEADER = 16;
const MAX_WRITE = 128 * 1024;
const BUF_SIZE = MAX_WRITE + 64 * 1024;
export const ROOT = 1;

export interface FuseFile { name: string; ino: number; mode: number }
export interface IoctlIn { tid: number; cmd: number; arg: bigint; in: Buffer; outSize: number; flags: number }
/** Answers a write() later: the byte count, or an Errno. Does nothing once the writer was interrupted. */
export type WriteReply = (result: number | Errno) => void;

/** What the file system behind the mount does; methods throw Errno to fail a request. */
export interface FuseFs {
  files(): FuseFile[];
  open(ino: number, flags: number, tid: number): number; // returns fh
  read(ino: number, fh: number, offset: number, size: number, flags: number, tid: number): Buffer | 'park';
  /** The byte count; or 'park' after taking `later()`, which answers it when the operation completes. */
  write(ino: number, fh: number, data: Buffer, tid: number, later: () => WriteReply): number | 'park';
  ioctl(ino: number, fh: number, req: IoctlIn): Buffer | undefined;
  release(ino: number, fh: number): void;
  log(msg: string): void;
  /** Called once the kernel's INIT has been answered. */
  initialized(): void;
}

/** Mount a FUSE file system at `dir`; returns the /dev/fuse fd (non-blocking). */
export function mountFuse(dir: string, fsname: string): number {
  const fd = sysOpen('/dev/fuse', O_RDWR | O_CLOEXEC | O_NONBLOCK);
  const MS_NOSUID = 2, MS_NODEV = 4;
  mount(fsname, dir, `fuse.${fsname}`, MS_NOSUID | MS_NODEV,
    `fd=${fd},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,max_read=${MAX_WRITE}`);
  return fd;
}

export class FuseServer {
  private readonly req = Buffer.alloc(BUF_SIZE);
  private readonly reqAddr = addressOf(this.req);
  private readonly out = Buffer.alloc(BUF_SIZE);
  private readonly outAddr = addressOf(this.out);
  private readonly parked = new Set<bigint>(); // blocking reads and writes (answered on INTERRUPT, or by a WriteReply)
  readonly counters = { requests: 0, errors: 0 };
  private readonly started = Math.floor(Date.now() / 1000);

  constructor(readonly fd: number, private readonly fs: FuseFs) {}

  /** Serve queued requests (at most `max`); returns 'gone' once the mount is gone. */
  serve(max = 64): 'idle' | 'more' | 'gone' {
    for (let i = 0; i < max; i++) {
      const n = readRaw(this.fd, this.reqAddr, BUF_SIZE);
      if (n === -EAGAIN) return 'idle';
      if (n === -EINTR || n === -ENOENT) continue; // interrupted / request aborted before we read it
      if (n === -ENODEV) return 'gone';
      if (n < 0) throw new Errno(-n, 'read /dev/fuse');
      this.counters.requests++;
      this.dispatch(this.req.subarray(0, n));
    }
    return 'more';
  }

  private reply(unique: bigint, error: number, payload?: Buffer): void {
    const len = OUT_HEADER + (error ? 0 : payload?.length ?? 0);
    this.out.writeUInt32LE(len, 0);
    this.out.writeInt32LE(-error, 4);
    this.out.writeBigUInt64LE(unique, 8);
    if (!error && payload) payload.copy(this.out, OUT_HEADER);
    const r = writeRaw(this.fd, this.outAddr, len);
    if (r < 0 && r !== -ENOENT) this.fs.log(`fuse reply failed: errno ${-r}`);
  }

  private attr(f: FuseFile | null): Buffer {
    const a = Buffer.alloc(88);
    const ino = f ? f.ino : ROOT;
    a.writeBigUInt64LE(BigInt(ino), 0);
    a.writeBigUInt64LE(0n, 8); // size: direct I/O files report 0
    for (const o of [24, 32, 40]) a.writeBigUInt64LE(BigInt(this.started), o);
    a.writeUInt32LE(f ? S_IFREG | f.mode : S_IFDIR | 0o755, 60);
    a.writeUInt32LE(f ? 1 : 2, 64); // nlink
    a.writeUInt32LE(4096, 80); // blksize
    return a;
  }
  private file(ino: number): FuseFile | undefined { return this.fs.files().find((f) => f.ino === ino); }
  private entryOut(f: FuseFile): Buffer {
    const b = Buffer.alloc(128);
    b.writeBigUInt64LE(BigInt(f.ino), 0);
    // entry_valid and attr_valid stay 0: every path walk asks again, so a node removed by
    // `vdpa dev del` is gone at once and a new one is there at once.
    this.attr(f).copy(b, 40);
    return b;
  }

  private dispatch(r: Buffer): void {
    const opcode = r.readUInt32LE(4), unique = r.readBigUInt64LE(8), nodeid = Number(r.readBigUInt64LE(16));
    const tid = r.readUInt32LE(32);
    const body = r.subarray(IN_HEADER);
    try {
      switch (opcode) {
        case INIT: return this.init(unique, body);
        case FORGET: case BATCH_FORGET: return; // no reply
        case INTERRUPT: {
          const target = body.readBigUInt64LE(0);
          if (this.parked.delete(target)) this.reply(target, E.EINTR);
          return; // everything else was answered before we read the INTERRUPT
        }
        case DESTROY: return this.reply(unique, 0);
        case LOOKUP: {
          const name = body.subarray(0, body.indexOf(0) < 0 ? body.length : body.indexOf(0)).toString();
          const f = nodeid === ROOT ? this.fs.files().find((x) => x.name === name) : undefined;
          if (!f) return this.reply(unique, E.ENOENT);
          return this.reply(unique, 0, this.entryOut(f));
        }
        case GETATTR: case SETATTR: {
          const f = nodeid === ROOT ? null : this.file(nodeid);
          if (f === undefined) return this.reply(unique, E.ENOENT);
          const b = Buffer.alloc(104);
          b.writeBigUInt64LE(1n, 0);
          this.attr(f).copy(b, 16);
          return this.reply(unique, 0, b);
        }
        case STATFS: {
          const b = Buffer.alloc(80);
          b.writeUInt32LE(4096, 40); b.writeUInt32LE(255, 44); b.writeUInt32LE(4096, 48);
          return this.reply(unique, 0, b);
        }
        case OPENDIR: case RELEASEDIR: case FSYNCDIR: case FLUSH:
          return this.reply(unique, 0, opcode === OPENDIR ? Buffer.alloc(16) : undefined);
        case READDIR: return this.readdir(unique, body);
        case OPEN: {
          const flags = body.readUInt32LE(0);
          const fh = this.fs.open(nodeid, flags, tid);
          const b = Buffer.alloc(16);
          b.writeBigUInt64LE(BigInt(fh), 0);
          b.writeUInt32LE(FOPEN_DIRECT_IO, 8);
          return this.reply(unique, 0, b);
        }
        case READ: {
          const fh = Number(body.readBigUInt64LE(0)), offset = Number(body.readBigUInt64LE(8)), size = body.readUInt32LE(16);
          const flags = body.readUInt32LE(32);
          const data = this.fs.read(nodeid, fh, offset, size, flags, tid);
          if (data === 'park') { this.parked.add(unique); return; }
          return this.reply(unique, 0, data.subarray(0, size));
        }
        case WRITE: {
          const fh = Number(body.readBigUInt64LE(0)), size = body.readUInt32LE(16);
          const written = (n: number): Buffer => { const b = Buffer.alloc(8); b.writeUInt32LE(Math.min(n, size), 0); return b; };
          const later = (): WriteReply => {
            this.parked.add(unique);
            return (result) => {
              if (!this.parked.delete(unique)) return; // interrupted: the writer has had EINTR
              if (result instanceof Errno) this.reply(unique, result.errno); else this.reply(unique, 0, written(result));
            };
          };
          const n = this.fs.write(nodeid, fh, body.subarray(40, 40 + size), tid, later);
          if (n === 'park') return;
          return this.reply(unique, 0, written(n));
        }
        case IOCTL: {
          const fh = Number(body.readBigUInt64LE(0)), flags = body.readUInt32LE(8), cmd = body.readUInt32LE(12);
          const arg = body.readBigUInt64LE(16), inSize = body.readUInt32LE(24), outSize = body.readUInt32LE(28);
          const data = this.fs.ioctl(nodeid, fh, { tid, cmd, arg, in: body.subarray(32, 32 + inSize), outSize, flags });
          const out = Buffer.alloc(16 + Math.min(outSize, data?.length ?? 0));
          if (data) data.copy(out, 16, 0, out.length - 16);
          return this.reply(unique, 0, out);
        }
        case RELEASE: {
          this.fs.release(nodeid, Number(body.readBigUInt64LE(0)));
          return this.reply(unique, 0);
        }
        case FSYNC: case GETXATTR: case LISTXATTR: case ACCESS: case POLL: case LSEEK: case READDIRPLUS:
          return this.reply(unique, E.ENOSYS);
        default:
          return this.reply(unique, E.ENOSYS);
      }
    } catch (e) {
      this.counters.errors++;
      if (e instanceof Errno) return this.reply(unique, e.errno);
      this.fs.log(`fuse opcode ${opcode} failed: ${(e as Error).stack ?? e}`);
      return this.reply(unique, E.EIO);
    }
  }

  private init(unique: bigint, body: Buffer): void {
    const major = body.readUInt32LE(0), minor = body.readUInt32LE(4), maxReadahead = body.readUInt32LE(8);
    const b = Buffer.alloc(64);
    b.writeUInt32LE(7, 0);
    b.writeUInt32LE(Math.min(minor, 31), 4);
    b.writeUInt32LE(maxReadahead, 8);
    const FUSE_BIG_WRITES = 1 << 5, FUSE_MAX_PAGES = 1 << 22;
    b.writeUInt32LE(FUSE_BIG_WRITES | FUSE_MAX_PAGES, 12);
    b.writeUInt16LE(16, 16); // max_background
    b.writeUInt16LE(12, 18); // congestion_threshold
    b.writeUInt32LE(MAX_WRITE, 20);
    b.writeUInt32LE(1, 24); // time_gran
    b.writeUInt16LE(MAX_WRITE / 4096, 28); // max_pages
    if (major !== 7) this.fs.log(`kernel FUSE major ${major}, answering 7`);
    this.reply(unique, 0, b);
    this.fs.initialized();
  }

  private readdir(unique: bigint, body: Buffer): void {
    const offset = Number(body.readBigUInt64LE(8)), size = body.readUInt32LE(16);
    const all = [{ name: '.', ino: ROOT, dir: true }, { name: '..', ino: ROOT, dir: true },
      ...this.fs.files().map((f) => ({ name: f.name, ino: f.ino, dir: false }))];
    const parts: Buffer[] = [];
    let used = 0;
    for (let i = offset; i < all.length; i++) {
      const name = Buffer.from(all[i].name);
      const len = (24 + name.length + 7) & ~7;
      if (used + len > size) break;
      const d = Buffer.alloc(len);
      d.writeBigUInt64LE(BigInt(all[i].ino), 0);
      d.writeBigUInt64LE(BigInt(i + 1), 8);
      d.writeUInt32LE(name.length, 16);
      d.writeUInt32LE(all[i].dir ? 4 : 8, 20); // DT_DIR / DT_REG
      name.copy(d, 24);
      parts.push(d); used += len;
    }
    this.reply(unique, 0, Buffer.concat(parts));
  }
}
