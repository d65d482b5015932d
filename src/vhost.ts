// vhost / vhost-vdpa UAPI: ioctl numbers, feature bits, IOTLB message layout and typed wrappers.
// One definition for the VMM's frontend, the embedded device daemon and the conformance suite.
// Layouts: include/uapi/linux/vhost.h and vhost_types.h (x86-64); see docs/vhost-vdpa-live-update.md §2.
import { ioctl, ioctlBuf, iocFamily, write } from './libc.js';

export const VHOST_VIRTIO = 0xaf;
const { io, ior, iow, iowr } = iocFamily(VHOST_VIRTIO);
export { iocDir, iocSize, iocType, iocNr, IOC_NONE, IOC_READ, IOC_WRITE } from './libc.js';

export const VHOST = {
  GET_FEATURES: ior(0x00, 8),
  SET_FEATURES: iow(0x00, 8),
  SET_OWNER: io(0x01),
  RESET_OWNER: io(0x02),
  SET_MEM_TABLE: iow(0x03, 8),
  SET_LOG_BASE: iow(0x04, 8),
  SET_LOG_FD: iow(0x07, 4),
  SET_VRING_NUM: iow(0x10, 8),
  SET_VRING_ADDR: iow(0x11, 40),
  SET_VRING_BASE: iow(0x12, 8),
  GET_VRING_BASE: iowr(0x12, 8),
  SET_VRING_ENDIAN: iow(0x13, 8), // the vhost core's; vhost-vdpa answers ENOTTY
  GET_VRING_ENDIAN: iow(0x14, 8),
  SET_VRING_KICK: iow(0x20, 8),
  SET_VRING_CALL: iow(0x21, 8),
  SET_VRING_ERR: iow(0x22, 8),
  SET_VRING_BUSYLOOP_TIMEOUT: iow(0x23, 8),
  GET_VRING_BUSYLOOP_TIMEOUT: iow(0x24, 8), // _IOW-encoded upstream: nothing travels back
  SET_BACKEND_FEATURES: iow(0x25, 8),
  GET_BACKEND_FEATURES: ior(0x26, 8),
  NEW_OWNER: io(0x27), // proposed (vdpa live update V2), not upstream
  VDPA_GET_DEVICE_ID: ior(0x70, 4),
  VDPA_GET_STATUS: ior(0x71, 1),
  VDPA_SET_STATUS: iow(0x72, 1),
  VDPA_GET_CONFIG: ior(0x73, 8),
  VDPA_SET_CONFIG: iow(0x74, 8),
  VDPA_SET_VRING_ENABLE: iow(0x75, 8),
  VDPA_GET_VRING_NUM: ior(0x76, 2),
  VDPA_SET_CONFIG_CALL: iow(0x77, 4),
  VDPA_GET_IOVA_RANGE: ior(0x78, 16),
  VDPA_GET_CONFIG_SIZE: ior(0x79, 4),
  VDPA_GET_AS_NUM: ior(0x7a, 4),
  VDPA_GET_VRING_GROUP: iowr(0x7b, 8),
  VDPA_SET_GROUP_ASID: iow(0x7c, 8),
  VDPA_SUSPEND: io(0x7d),
  VDPA_RESUME: io(0x7e),
  VDPA_GET_VRING_DESC_GROUP: iowr(0x7f, 8),
  VDPA_GET_VQS_COUNT: ior(0x80, 4),
  VDPA_GET_GROUP_NUM: ior(0x81, 4),
  VDPA_GET_VRING_SIZE: iowr(0x82, 8),
} as const;
export type VhostIoctl = keyof typeof VHOST;
export const vhostIoctlName = (cmd: number): string =>
  (Object.entries(VHOST).find(([, v]) => v === cmd)?.[0] ?? `0x${cmd.toString(16)}`);

/** VHOST_BACKEND_F_* bit masks. */
export const BACKEND_F = {
  IOTLB_MSG_V2: 1n << 1n,
  IOTLB_BATCH: 1n << 2n,
  IOTLB_ASID: 1n << 3n,
  SUSPEND: 1n << 4n,
  RESUME: 1n << 5n,
  ENABLE_AFTER_DRIVER_OK: 1n << 6n,
  DESC_ASID: 1n << 7n,
  IOTLB_PERSIST: 1n << 8n,
  NEW_OWNER: 1n << 9n, // proposed
  IOTLB_REMAP: 1n << 10n, // proposed
} as const;

/** Framing types of a write() to the device, and iotlb.type values. */
export const VHOST_IOTLB_MSG = 1, VHOST_IOTLB_MSG_V2 = 2;
export const IOTLB = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4, BATCH_BEGIN: 5, BATCH_END: 6, REMAP: 7 } as const;
export const iotlbName = (t: number): string => Object.entries(IOTLB).find(([, v]) => v === t)?.[0] ?? `type ${t}`;
export const IOTLB_PERM = { RO: 1, WO: 2, RW: 3 } as const;
export const VHOST_FILE_UNBIND = -1;
export const IOTLB_MSG_SIZE = 72;

/** virtio feature bits (masks) that the vhost-vdpa layer itself cares about. */
export const VIRTIO_F = { ANY_LAYOUT: 1n << 27n, VERSION_1: 1n << 32n, ACCESS_PLATFORM: 1n << 33n } as const;

/** virtio device status bits. */
export const VIRTIO_STATUS = { ACKNOWLEDGE: 0x01, DRIVER: 0x02, DRIVER_OK: 0x04, FEATURES_OK: 0x08, NEEDS_RESET: 0x40, FAILED: 0x80 } as const;
export const VIRTIO_ID = { NET: 1, BLOCK: 2 } as const;

export interface IotlbMsg {
  type: number; // IOTLB.*
  iova: bigint;
  size: bigint;
  uaddr: bigint;
  perm: number;
  asid?: number;
  /** Framing: V2 (default) or the old V1 struct vhost_msg. */
  framing?: typeof VHOST_IOTLB_MSG | typeof VHOST_IOTLB_MSG_V2;
}

/** struct vhost_msg_v2: type u32, asid u32, then struct vhost_iotlb_msg (iova, size, uaddr u64; perm, type u8). */
export const IOTLB_MSG = { framing: 0, asid: 4, iova: 8, size: 16, uaddr: 24, perm: 32, type: 33 } as const;

/** Encode a 72-byte vhost_msg / vhost_msg_v2. */
export function encodeIotlbMsg(m: IotlbMsg): Buffer {
  const b = Buffer.alloc(IOTLB_MSG_SIZE);
  b.writeUInt32LE(m.framing ?? VHOST_IOTLB_MSG_V2, IOTLB_MSG.framing);
  b.writeUInt32LE(m.asid ?? 0, IOTLB_MSG.asid);
  b.writeBigUInt64LE(m.iova, IOTLB_MSG.iova);
  b.writeBigUInt64LE(m.size, IOTLB_MSG.size);
  b.writeBigUInt64LE(m.uaddr, IOTLB_MSG.uaddr);
  b.writeUInt8(m.perm, IOTLB_MSG.perm);
  b.writeUInt8(m.type, IOTLB_MSG.type);
  return b;
}

/** Decode the fields of a vhost_msg(_v2); length checks are the caller's (the kernel's order matters). */
export function decodeIotlbMsg(b: Buffer): Required<IotlbMsg> {
  return {
    framing: b.readUInt32LE(IOTLB_MSG.framing) as 1 | 2,
    asid: b.readUInt32LE(IOTLB_MSG.asid),
    iova: b.readBigUInt64LE(IOTLB_MSG.iova),
    size: b.readBigUInt64LE(IOTLB_MSG.size),
    uaddr: b.readBigUInt64LE(IOTLB_MSG.uaddr),
    perm: b.readUInt8(IOTLB_MSG.perm),
    type: b.readUInt8(IOTLB_MSG.type),
  };
}

// ---- typed wrappers (one per ioctl, kvm-ioctls style) ----
const u64Buf = (v: bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(v); return b; };
const pair = (a: number, b: number) => { const x = Buffer.alloc(8); x.writeUInt32LE(a >>> 0, 0); x.writeInt32LE(b | 0, 4); return x; };
const pairU = (a: number, b: number) => { const x = Buffer.alloc(8); x.writeUInt32LE(a >>> 0, 0); x.writeUInt32LE(b >>> 0, 4); return x; };

export interface VringAddr { index: number; flags: number; desc: bigint; used: bigint; avail: bigint; log: bigint }
/** struct vhost_vring_addr (40 bytes). */
export const VRING_ADDR = { index: 0, flags: 4, desc: 8, used: 16, avail: 24, log: 32, size: 40 } as const;

export const vhost = {
  getFeatures(fd: number): bigint { const b = Buffer.alloc(8); ioctlBuf('VHOST_GET_FEATURES', fd, VHOST.GET_FEATURES, b); return b.readBigUInt64LE(); },
  setFeatures(fd: number, f: bigint): void { ioctlBuf('VHOST_SET_FEATURES', fd, VHOST.SET_FEATURES, u64Buf(f)); },
  setOwner(fd: number): void { ioctl('VHOST_SET_OWNER', fd, VHOST.SET_OWNER); },
  newOwner(fd: number): void { ioctl('VHOST_NEW_OWNER', fd, VHOST.NEW_OWNER); },
  getBackendFeatures(fd: number): bigint { const b = Buffer.alloc(8); ioctlBuf('VHOST_GET_BACKEND_FEATURES', fd, VHOST.GET_BACKEND_FEATURES, b); return b.readBigUInt64LE(); },
  setBackendFeatures(fd: number, f: bigint): void { ioctlBuf('VHOST_SET_BACKEND_FEATURES', fd, VHOST.SET_BACKEND_FEATURES, u64Buf(f)); },
  setVringNum(fd: number, index: number, num: number): void { ioctlBuf('VHOST_SET_VRING_NUM', fd, VHOST.SET_VRING_NUM, pairU(index, num)); },
  setVringBase(fd: number, index: number, num: number): void { ioctlBuf('VHOST_SET_VRING_BASE', fd, VHOST.SET_VRING_BASE, pairU(index, num)); },
  getVringBase(fd: number, index: number): number { const b = pairU(index, 0); ioctlBuf('VHOST_GET_VRING_BASE', fd, VHOST.GET_VRING_BASE, b); return b.readUInt32LE(4); },
  setVringAddr(fd: number, a: VringAddr): void {
    const b = Buffer.alloc(VRING_ADDR.size);
    b.writeUInt32LE(a.index, VRING_ADDR.index); b.writeUInt32LE(a.flags, VRING_ADDR.flags);
    b.writeBigUInt64LE(a.desc, VRING_ADDR.desc); b.writeBigUInt64LE(a.used, VRING_ADDR.used);
    b.writeBigUInt64LE(a.avail, VRING_ADDR.avail); b.writeBigUInt64LE(a.log, VRING_ADDR.log);
    ioctlBuf('VHOST_SET_VRING_ADDR', fd, VHOST.SET_VRING_ADDR, b);
  },
  setVringKick(fd: number, index: number, efd: number): void { ioctlBuf('VHOST_SET_VRING_KICK', fd, VHOST.SET_VRING_KICK, pair(index, efd)); },
  setVringCall(fd: number, index: number, efd: number): void { ioctlBuf('VHOST_SET_VRING_CALL', fd, VHOST.SET_VRING_CALL, pair(index, efd)); },
  getDeviceId(fd: number): number { const b = Buffer.alloc(4); ioctlBuf('VHOST_VDPA_GET_DEVICE_ID', fd, VHOST.VDPA_GET_DEVICE_ID, b); return b.readUInt32LE(); },
  getStatus(fd: number): number { const b = Buffer.alloc(1); ioctlBuf('VHOST_VDPA_GET_STATUS', fd, VHOST.VDPA_GET_STATUS, b); return b[0]; },
  setStatus(fd: number, s: number): void { ioctlBuf('VHOST_VDPA_SET_STATUS', fd, VHOST.VDPA_SET_STATUS, Buffer.from([s])); },
  getConfig(fd: number, off: number, len: number): Buffer {
    const b = Buffer.alloc(8 + len); b.writeUInt32LE(off, 0); b.writeUInt32LE(len, 4);
    ioctlBuf('VHOST_VDPA_GET_CONFIG', fd, VHOST.VDPA_GET_CONFIG, b); return b.subarray(8);
  },
  setConfig(fd: number, off: number, data: Buffer): void {
    const b = Buffer.alloc(8 + data.length); b.writeUInt32LE(off, 0); b.writeUInt32LE(data.length, 4); data.copy(b, 8);
    ioctlBuf('VHOST_VDPA_SET_CONFIG', fd, VHOST.VDPA_SET_CONFIG, b);
  },
  setVringEnable(fd: number, index: number, enable: boolean): void { ioctlBuf('VHOST_VDPA_SET_VRING_ENABLE', fd, VHOST.VDPA_SET_VRING_ENABLE, pairU(index, enable ? 1 : 0)); },
  getVringNum(fd: number): number { const b = Buffer.alloc(2); ioctlBuf('VHOST_VDPA_GET_VRING_NUM', fd, VHOST.VDPA_GET_VRING_NUM, b); return b.readUInt16LE(); },
  setConfigCall(fd: number, efd: number): void { const b = Buffer.alloc(4); b.writeInt32LE(efd); ioctlBuf('VHOST_VDPA_SET_CONFIG_CALL', fd, VHOST.VDPA_SET_CONFIG_CALL, b); },
  getIovaRange(fd: number): { first: bigint; last: bigint } {
    const b = Buffer.alloc(16); ioctlBuf('VHOST_VDPA_GET_IOVA_RANGE', fd, VHOST.VDPA_GET_IOVA_RANGE, b);
    return { first: b.readBigUInt64LE(0), last: b.readBigUInt64LE(8) };
  },
  getConfigSize(fd: number): number { const b = Buffer.alloc(4); ioctlBuf('VHOST_VDPA_GET_CONFIG_SIZE', fd, VHOST.VDPA_GET_CONFIG_SIZE, b); return b.readUInt32LE(); },
  getAsNum(fd: number): number { const b = Buffer.alloc(4); ioctlBuf('VHOST_VDPA_GET_AS_NUM', fd, VHOST.VDPA_GET_AS_NUM, b); return b.readUInt32LE(); },
  getVqsCount(fd: number): number { const b = Buffer.alloc(4); ioctlBuf('VHOST_VDPA_GET_VQS_COUNT', fd, VHOST.VDPA_GET_VQS_COUNT, b); return b.readUInt32LE(); },
  /** One IOTLB message as one 72-byte write(); failures surface as the kernel's errno (EFAULT, EINVAL). */
  iotlb(fd: number, m: IotlbMsg): void { write(`IOTLB ${iotlbName(m.type)} write`, fd, encodeIotlbMsg(m)); },
  suspend(fd: number): void { ioctl('VHOST_VDPA_SUSPEND', fd, VHOST.VDPA_SUSPEND); },
  resume(fd: number): void { ioctl('VHOST_VDPA_RESUME', fd, VHOST.VDPA_RESUME); },
};
