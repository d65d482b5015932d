// Device request generators for the vhost-vdpa daemon: every vhost ioctl with random argument
// bytes of its encoded size, random ioctl numbers in the 0xAF space, IOTLB messages with every
// field random (V1/V2 framing, batches, REMAP). fd-carrying arguments only ever name fds that are
// safe to hand to the device (never one of this process's own libuv eventfds).
import { IOTLB, VHOST, iocDir, iocSize } from '../../src/vhost.js';
import { edgeU32, edgeU64, type Rng } from './prng.js';

export const ALLOWED_ERRNOS = new Set(['EPERM', 'EFAULT', 'EINVAL', 'EBUSY', 'ENOTTY', 'ENOBUFS', 'EOPNOTSUPP', 'ENOMEM', 'EBADF', 'ENOENT', 'EIO', 'E2BIG']);

/** vhost ioctls whose argument carries an fd at this offset. */
export const FD_ARG: Map<number, number> = new Map([
  [VHOST.SET_VRING_KICK, 4], [VHOST.SET_VRING_CALL, 4], [VHOST.SET_VRING_ERR, 4], [VHOST.VDPA_SET_CONFIG_CALL, 0],
]);
export const ioc = (dir: number, nr: number, size: number): number => ((dir << 30) | (size << 16) | (0xaf << 8) | nr) >>> 0;

export interface IoctlCase { what: string; cmd: number; arg: Buffer }

/** Backing store for an argument: the encoded size is what the kernel copies; the rest is room
 * for the device's own accesses past the header (GET_CONFIG writes at arg+8, SET_MEM_TABLE reads). */
const BACKING = 8 + 4096;

function fillArg(r: Rng, cmd: number, safeFds: number[]): Buffer {
  const size = iocSize(cmd);
  const b = Buffer.alloc(Math.max(BACKING, size + 64));
  const style = r.int(4);
  if (style === 0) r.bytes(size).copy(b);
  else for (let o = 0; o + 4 <= size; o += 4) b.writeUInt32LE(style === 1 ? edgeU32(r) : r.int(style === 2 ? 4 : 300), o);
  if (size >= 4 && r.bool(0.5)) b.writeUInt32LE(r.int(4), 0); // a plausible queue index / offset
  if (size >= 16 && r.bool(0.3)) for (let o = 8; o + 8 <= size; o += 8) b.writeBigUInt64LE(edgeU64(r), o);
  const fdAt = FD_ARG.get(cmd);
  if (fdAt !== undefined) b.writeInt32LE(r.pick(safeFds), fdAt);
  return b;
}

/** A known vhost ioctl with a random argument of its encoded size. */
export function knownIoctl(r: Rng, safeFds: number[], exclude: Set<number>): IoctlCase {
  const names = Object.keys(VHOST) as (keyof typeof VHOST)[];
  let name = r.pick(names);
  while (exclude.has(VHOST[name])) name = r.pick(names);
  const cmd = VHOST[name];
  return { what: name, cmd, arg: fillArg(r, cmd, safeFds) };
}

/** A random request number in the 0xAF space (random nr, direction and size). */
export function randomIoctl(r: Rng, safeFds: number[], exclude: Set<number>): IoctlCase {
  for (;;) {
    const nr = r.bool(0.5) ? r.int(256) : r.pick([0x00, 0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x23, 0x25, 0x26, 0x27, 0x28, 0x70, 0x73, 0x74, 0x7b, 0x7c, 0x7f, 0x80, 0x82, 0x83, 0xff]);
    const dir = r.int(4);
    const size = dir === 0 ? r.pick([0, 0, 0, 4, 8]) : r.pick([0, 1, 2, 3, 4, 7, 8, 9, 16, 40, 41, 64, 72, 256, 4096, 8192, 16383]);
    const cmd = ioc(dir, nr, size);
    if (exclude.has(cmd)) continue;
    return { what: `_IOC(${dir},0xaf,0x${nr.toString(16)},${size})`, cmd, arg: fillArg(r, cmd, safeFds) };
  }
}

export interface IotlbCase { what: string; data: Buffer }

/** One IOTLB write: every field random-ish, V1 or V2 framing, sometimes a wrong length. */
export function iotlbMessage(r: Rng, ctx: { uaddr: bigint; iova: bigint; size: bigint }, type?: number): IotlbCase {
  const b = Buffer.alloc(72);
  const framing = r.bool(0.1) ? edgeU32(r) : r.pick([1, 2, 2]);
  const t = type ?? (r.bool(0.85) ? r.pick([IOTLB.UPDATE, IOTLB.UPDATE, IOTLB.INVALIDATE, IOTLB.INVALIDATE, IOTLB.REMAP, IOTLB.REMAP, IOTLB.BATCH_BEGIN, IOTLB.BATCH_END, IOTLB.MISS, IOTLB.ACCESS_FAIL]) : r.int(256));
  const iova = r.pick<() => bigint>([() => edgeU64(r), () => ctx.iova + BigInt(r.int(16)) * 0x1000n, () => ctx.iova, () => r.u64(), () => ctx.iova + BigInt(r.int(Number(ctx.size)))])();
  const size = r.pick<() => bigint>([() => edgeU64(r), () => ctx.size, () => BigInt(1 + r.int(16)) * 0x1000n, () => BigInt(r.int(0x10000)), () => 0n, () => (1n << 64n) - iova])() & ((1n << 64n) - 1n);
  const uaddr = r.pick<() => bigint>([() => ctx.uaddr, () => ctx.uaddr + BigInt(r.int(16)) * 0x1000n, () => edgeU64(r), () => r.u64(), () => ctx.uaddr + BigInt(r.int(Number(ctx.size)))])() & ((1n << 64n) - 1n);
  const perm = r.bool(0.7) ? r.pick([0, 1, 2, 3]) : r.int(256);
  b.writeUInt32LE(framing >>> 0, 0);
  b.writeUInt32LE(r.bool(0.8) ? r.int(2) : edgeU32(r), 4); // asid (V2) / padding
  b.writeBigUInt64LE(iova, 8); b.writeBigUInt64LE(size, 16); b.writeBigUInt64LE(uaddr, 24);
  b[32] = perm; b[33] = t;
  if (r.bool(0.1)) r.bytes(38).copy(b, 34); // padding garbage
  const len = r.bool(0.9) ? 72 : r.pick([0, 1, 3, 4, 7, 8, 39, 40, 41, 64, 71, 73, 144, 200]);
  const data = len <= 72 ? b.subarray(0, len) : Buffer.concat([b, r.bytes(len - 72)]);
  return { what: `iotlb framing ${framing} type ${t} iova 0x${iova.toString(16)} size 0x${size.toString(16)} uaddr 0x${uaddr.toString(16)} perm ${perm} len ${len}`, data };
}

/** BATCH_BEGIN, 1–6 random messages (REMAP-heavy), BATCH_END (sometimes missing). */
export function batchSequence(r: Rng, ctx: { uaddr: bigint; iova: bigint; size: bigint }): IotlbCase[] {
  const out = [iotlbMessage(r, ctx, IOTLB.BATCH_BEGIN)];
  for (let i = 0, n = 1 + r.int(6); i < n; i++) out.push(iotlbMessage(r, ctx, r.pick([IOTLB.REMAP, IOTLB.REMAP, IOTLB.UPDATE, IOTLB.INVALIDATE, r.int(256)])));
  if (r.bool(0.85)) out.push(iotlbMessage(r, ctx, IOTLB.BATCH_END));
  return out;
}

export { iocDir, iocSize };
