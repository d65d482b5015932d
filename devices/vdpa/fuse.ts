// A minimal FUSE server speaking the kernel protocol (include/uapi/linux/fuse.h) directly over
// /dev/fuse: a flat root directory of files. Requests are answered one at a time, in order, by
// the daemon's single event-loop thread. Ioctls on a plain FUSE mount are "restricted": the kernel
// moves exactly _IOC_SIZE bytes in and out, and fuse_ioctl_in.arg is the caller's pointer.
import { constants } from 'node:os';
import { addressOf, mount, open as sysOpen, O_RDWR, O_CLOEXEC, O_NONBLOCK } from '../../src/libc.js';
import { readRaw, writeRaw, EAGAIN, EINTR, ENOENT, ENODEV } from './sys.js';
import { Errno } from './device.js';

const E = constants.errno;

// The protocol as linux/fuse.h defines it; tools/layout-check.mjs checks every entry against it.
/** enum fuse_opcode: FUSE_<name>. */
export const FUSE_OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17, RELEASE: 18, FSYNC: 20,
  GETXATTR: 22, LISTXATTR: 23, FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, ACCESS: 34,
  INTERRUPT: 36, DESTROY: 38, IOCTL: 39, POLL: 40, BATCH_FORGET: 42, READDIRPLUS: 44, LSEEK: 46,
} as const;
export const FUSE_KERNEL_VERSION = 7;
/** fuse_open_out.open_flags: FOPEN_<name>. */
export const FOPEN = { DIRECT_IO: 1 << 0 } as const;
/** fuse_init_out.flags: FUSE_<name>. */
export const FUSE_INIT_FLAG = { BIG_WRITES: 1 << 5, MAX_PAGES: 1 << 22 } as const;
// One table per struct fuse_<name> (FUSE_<NAME>): the offsets of the fields used, by their C
// names, and `sizeof` where the size matters (a reply's length, where a payload starts).
export const FUSE_IN_HEADER = { len: 0, opcode: 4, unique: 8, nodeid: 16, pid: 32, sizeof: 40 } as const;
export const FUSE_OUT_HEADER = { len: 0, error: 4, unique: 8, sizeof: 16 } as const;
export const FUSE_ATTR = { ino: 0, size: 8, atime: 24, mtime: 32, ctime: 40, mode: 60, nlink: 64, blksize: 80, sizeof: 88 } as const;
export const FUSE_ENTRY_OUT = { nodeid: 0, entry_valid: 16, attr_valid: 24, attr: 40, sizeof: 128 } as const;
export const FUSE_ATTR_OUT = { attr_valid: 0, attr: 16, sizeof: 104 } as const;
export const FUSE_KSTATFS = { bsize: 40, namelen: 44, frsize: 48, sizeof: 80 } as const;
export const FUSE_STATFS_OUT = { st: 0, sizeof: 80 } as const;
export const FUSE_OPEN_IN = { flags: 0 } as const;
export const FUSE_OPEN_OUT = { fh: 0, open_flags: 8, sizeof: 16 } as const;
export const FUSE_READ_IN = { fh: 0, offset: 8, size: 16, flags: 32 } as const;
export const FUSE_WRITE_IN = { fh: 0, size: 16, sizeof: 40 } as const; // the data follows it
export const FUSE_WRITE_OUT = { size: 0, sizeof: 8 } as const;
export const FUSE_IOCTL_IN = { fh: 0, flags: 8, cmd: 12, arg: 16, in_size: 24, out_size: 28, sizeof: 32 } as const;
export const FUSE_IOCTL_OUT = { result: 0, sizeof: 16 } as const;
export const FUSE_INTERRUPT_IN = { unique: 0 } as const;
export const FUSE_RELEASE_IN = { fh: 0 } as const;
export const FUSE_INIT_IN = { major: 0, minor: 4, max_readahead: 8 } as const;
export const FUSE_INIT_OUT = {
  major: 0, minor: 4, max_readahead: 8, flags: 12, max_background: 16, congestion_threshold: 18, max_write: 20,
  time_gran: 24, max_pages: 28, sizeof: 64,
} as const;
export const FUSE_DIRENT = { ino: 0, off: 8, namelen: 16, type: 20, name: 24 } as const; // FUSE_NAME_OFFSET

const OP = FUSE_OP;
const MINOR_SERVED = 31; // the protocol minor this server answers at most
const S_IFDIR = 0o040000, S_IFREG = 0o100000;
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
    const H = FUSE_OUT_HEADER;
    const len = H.sizeof + (error ? 0 : payload?.length ?? 0);
    this.out.writeUInt32LE(len, H.len);
    this.out.writeInt32LE(-error, H.error);
    this.out.writeBigUInt64LE(unique, H.unique);
    if (!error && payload) payload.copy(this.out, H.sizeof);
    const r = writeRaw(this.fd, this.outAddr, len);
    if (r < 0 && r !== -ENOENT) this.fs.log(`fuse reply failed: errno ${-r}`);
  }

  private attr(f: FuseFile | null): Buffer {
    const A = FUSE_ATTR, a = Buffer.alloc(A.sizeof);
    const ino = f ? f.ino : ROOT;
    a.writeBigUInt64LE(BigInt(ino), A.ino);
    a.writeBigUInt64LE(0n, A.size); // direct I/O files report 0
    for (const o of [A.atime, A.mtime, A.ctime]) a.writeBigUInt64LE(BigInt(this.started), o);
    a.writeUInt32LE(f ? S_IFREG | f.mode : S_IFDIR | 0o755, A.mode);
    a.writeUInt32LE(f ? 1 : 2, A.nlink);
    a.writeUInt32LE(4096, A.blksize);
    return a;
  }
  private file(ino: number): FuseFile | undefined { return this.fs.files().find((f) => f.ino === ino); }
  private entryOut(f: FuseFile): Buffer {
    const b = Buffer.alloc(FUSE_ENTRY_OUT.sizeof);
    b.writeBigUInt64LE(BigInt(f.ino), FUSE_ENTRY_OUT.nodeid);
    // entry_valid and attr_valid stay 0: every path walk asks again, so a node removed by
    // `vdpa dev del` is gone at once and a new one is there at once.
    this.attr(f).copy(b, FUSE_ENTRY_OUT.attr);
    return b;
  }

  private dispatch(r: Buffer): void {
    const H = FUSE_IN_HEADER;
    const opcode = r.readUInt32LE(H.opcode), unique = r.readBigUInt64LE(H.unique), nodeid = Number(r.readBigUInt64LE(H.nodeid));
    const tid = r.readUInt32LE(H.pid); // the calling thread's id
    const body = r.subarray(H.sizeof);
    try {
      switch (opcode) {
        case OP.INIT: return this.init(unique, body);
        case OP.FORGET: case OP.BATCH_FORGET: return; // no reply
        case OP.INTERRUPT: {
          const target = body.readBigUInt64LE(FUSE_INTERRUPT_IN.unique);
          if (this.parked.delete(target)) this.reply(target, E.EINTR);
          return; // everything else was answered before we read the INTERRUPT
        }
        case OP.DESTROY: return this.reply(unique, 0);
        case OP.LOOKUP: {
          const name = body.subarray(0, body.indexOf(0) < 0 ? body.length : body.indexOf(0)).toString();
          const f = nodeid === ROOT ? this.fs.files().find((x) => x.name === name) : undefined;
          if (!f) return this.reply(unique, E.ENOENT);
          return this.reply(unique, 0, this.entryOut(f));
        }
        case OP.GETATTR: case OP.SETATTR: {
          const f = nodeid === ROOT ? null : this.file(nodeid);
          if (f === undefined) return this.reply(unique, E.ENOENT);
          const b = Buffer.alloc(FUSE_ATTR_OUT.sizeof);
          b.writeBigUInt64LE(1n, FUSE_ATTR_OUT.attr_valid);
          this.attr(f).copy(b, FUSE_ATTR_OUT.attr);
          return this.reply(unique, 0, b);
        }
        case OP.STATFS: {
          const b = Buffer.alloc(FUSE_STATFS_OUT.sizeof), st = FUSE_STATFS_OUT.st;
          b.writeUInt32LE(4096, st + FUSE_KSTATFS.bsize); b.writeUInt32LE(255, st + FUSE_KSTATFS.namelen); b.writeUInt32LE(4096, st + FUSE_KSTATFS.frsize);
          return this.reply(unique, 0, b);
        }
        case OP.OPENDIR: case OP.RELEASEDIR: case OP.FSYNCDIR: case OP.FLUSH:
          return this.reply(unique, 0, opcode === OP.OPENDIR ? Buffer.alloc(FUSE_OPEN_OUT.sizeof) : undefined);
        case OP.READDIR: return this.readdir(unique, body);
        case OP.OPEN: {
          const flags = body.readUInt32LE(FUSE_OPEN_IN.flags);
          const fh = this.fs.open(nodeid, flags, tid);
          const b = Buffer.alloc(FUSE_OPEN_OUT.sizeof);
          b.writeBigUInt64LE(BigInt(fh), FUSE_OPEN_OUT.fh);
          b.writeUInt32LE(FOPEN.DIRECT_IO, FUSE_OPEN_OUT.open_flags);
          return this.reply(unique, 0, b);
        }
        case OP.READ: {
          const I = FUSE_READ_IN;
          const fh = Number(body.readBigUInt64LE(I.fh)), offset = Number(body.readBigUInt64LE(I.offset)), size = body.readUInt32LE(I.size);
          const flags = body.readUInt32LE(I.flags);
          const data = this.fs.read(nodeid, fh, offset, size, flags, tid);
          if (data === 'park') { this.parked.add(unique); return; }
          return this.reply(unique, 0, data.subarray(0, size));
        }
        case OP.WRITE: {
          const I = FUSE_WRITE_IN, O = FUSE_WRITE_OUT;
          const fh = Number(body.readBigUInt64LE(I.fh)), size = body.readUInt32LE(I.size);
          const written = (n: number): Buffer => { const b = Buffer.alloc(O.sizeof); b.writeUInt32LE(Math.min(n, size), O.size); return b; };
          const later = (): WriteReply => {
            this.parked.add(unique);
            return (result) => {
              if (!this.parked.delete(unique)) return; // interrupted: the writer has had EINTR
              if (result instanceof Errno) this.reply(unique, result.errno); else this.reply(unique, 0, written(result));
            };
          };
          const n = this.fs.write(nodeid, fh, body.subarray(I.sizeof, I.sizeof + size), tid, later);
          if (n === 'park') return;
          return this.reply(unique, 0, written(n));
        }
        case OP.IOCTL: {
          const I = FUSE_IOCTL_IN, O = FUSE_IOCTL_OUT;
          const fh = Number(body.readBigUInt64LE(I.fh)), flags = body.readUInt32LE(I.flags), cmd = body.readUInt32LE(I.cmd);
          const arg = body.readBigUInt64LE(I.arg), inSize = body.readUInt32LE(I.in_size), outSize = body.readUInt32LE(I.out_size);
          const data = this.fs.ioctl(nodeid, fh, { tid, cmd, arg, in: body.subarray(I.sizeof, I.sizeof + inSize), outSize, flags });
          const out = Buffer.alloc(O.sizeof + Math.min(outSize, data?.length ?? 0)); // result 0, no iovecs
          if (data) data.copy(out, O.sizeof, 0, out.length - O.sizeof);
          return this.reply(unique, 0, out);
        }
        case OP.RELEASE: {
          this.fs.release(nodeid, Number(body.readBigUInt64LE(FUSE_RELEASE_IN.fh)));
          return this.reply(unique, 0);
        }
        case OP.FSYNC: case OP.GETXATTR: case OP.LISTXATTR: case OP.ACCESS: case OP.POLL: case OP.LSEEK: case OP.READDIRPLUS:
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
    const I = FUSE_INIT_IN, O = FUSE_INIT_OUT;
    const major = body.readUInt32LE(I.major), minor = body.readUInt32LE(I.minor), maxReadahead = body.readUInt32LE(I.max_readahead);
    const b = Buffer.alloc(O.sizeof);
    b.writeUInt32LE(FUSE_KERNEL_VERSION, O.major);
    b.writeUInt32LE(Math.min(minor, MINOR_SERVED), O.minor);
    b.writeUInt32LE(maxReadahead, O.max_readahead);
    b.writeUInt32LE(FUSE_INIT_FLAG.BIG_WRITES | FUSE_INIT_FLAG.MAX_PAGES, O.flags);
    b.writeUInt16LE(16, O.max_background);
    b.writeUInt16LE(12, O.congestion_threshold);
    b.writeUInt32LE(MAX_WRITE, O.max_write);
    b.writeUInt32LE(1, O.time_gran);
    b.writeUInt16LE(MAX_WRITE / 4096, O.max_pages);
    if (major !== FUSE_KERNEL_VERSION) this.fs.log(`kernel FUSE major ${major}, answering ${FUSE_KERNEL_VERSION}`);
    this.reply(unique, 0, b);
    this.fs.initialized();
  }

  private readdir(unique: bigint, body: Buffer): void {
    const offset = Number(body.readBigUInt64LE(FUSE_READ_IN.offset)), size = body.readUInt32LE(FUSE_READ_IN.size);
    const all = [{ name: '.', ino: ROOT, dir: true }, { name: '..', ino: ROOT, dir: true },
      ...this.fs.files().map((f) => ({ name: f.name, ino: f.ino, dir: false }))];
    const parts: Buffer[] = [];
    let used = 0;
    for (let i = offset; i < all.length; i++) {
      const name = Buffer.from(all[i].name);
      const D = FUSE_DIRENT, len = (D.name + name.length + 7) & ~7; // FUSE_DIRENT_SIZE: 8-byte aligned
      if (used + len > size) break;
      const d = Buffer.alloc(len);
      d.writeBigUInt64LE(BigInt(all[i].ino), D.ino);
      d.writeBigUInt64LE(BigInt(i + 1), D.off);
      d.writeUInt32LE(name.length, D.namelen);
      d.writeUInt32LE(all[i].dir ? 4 : 8, D.type); // DT_DIR / DT_REG
      name.copy(d, D.name);
      parts.push(d); used += len;
    }
    this.reply(unique, 0, Buffer.concat(parts));
  }
}
