// virtio-mmio transport, version 2 (modern only). Registers are emulated here; everything else is
// the backend's (the vhost-vdpa frontend). Queue notifications never reach this code: a KVM
// ioeventfd on QueueNotify turns them into kicks, and the device interrupts through an irqfd.
// So InterruptStatus always reads "used buffer" and InterruptACK has nothing to clear.

/** Register offsets, VIRTIO_MMIO_<name> in linux/virtio_mmio.h (checked by tools/layout-check.mjs). */
export const VIRTIO_MMIO = {
  MAGIC_VALUE: 0x000, VERSION: 0x004, DEVICE_ID: 0x008, VENDOR_ID: 0x00c, DEVICE_FEATURES: 0x010, DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020, DRIVER_FEATURES_SEL: 0x024, QUEUE_SEL: 0x030, QUEUE_NUM_MAX: 0x034, QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044, QUEUE_NOTIFY: 0x050, INTERRUPT_STATUS: 0x060, INTERRUPT_ACK: 0x064, STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080, QUEUE_DESC_HIGH: 0x084, QUEUE_AVAIL_LOW: 0x090, QUEUE_AVAIL_HIGH: 0x094,
  QUEUE_USED_LOW: 0x0a0, QUEUE_USED_HIGH: 0x0a4, CONFIG_GENERATION: 0x0fc, CONFIG: 0x100,
} as const;
export const VIRTIO_MMIO_INT_VRING = 1 << 0;
export const VIRTIO_MMIO_MAGIC = 0x74726976, VIRTIO_MMIO_SIZE = 0x1000; // "virt"
const VERSION = 2; // modern
const VENDOR_ID = 0x4d564d4d; // "MMVM"
const R = VIRTIO_MMIO;

export interface QueueRegs { num: number; ready: boolean; desc: bigint; avail: bigint; used: bigint }

/** What the transport needs from the device behind it. */
export interface VirtioBackend {
  readonly deviceId: number;
  /** Feature bits offered to the driver. */
  readonly guestFeatures: bigint;
  /** Max size of queue `i`, 0 if it does not exist. */
  queueMax(i: number): number;
  readConfig(offset: number, len: number): Buffer;
  /** The driver wrote `status`; returns the status the device now holds (FEATURES_OK may be refused). */
  setStatus(status: number, driverFeatures: bigint): number;
}

export interface VirtioMmioState {
  deviceFeaturesSel: number; driverFeaturesSel: number; driverFeatures: string; queueSel: number;
  status: number; queues: { num: number; ready: boolean; desc: string; avail: string; used: string }[];
}

export class VirtioMmio {
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private driverFeatures = 0n;
  private queueSel = 0;
  status = 0;
  queues: QueueRegs[] = [];

  constructor(readonly base: number, private backend: VirtioBackend, readonly maxQueues = 8) { this.resetQueues(); }
  readonly size = VIRTIO_MMIO_SIZE;

  private resetQueues(): void {
    this.queues = Array.from({ length: this.maxQueues }, () => ({ num: 0, ready: false, desc: 0n, avail: 0n, used: 0n }));
  }

  get negotiatedFeatures(): bigint { return this.driverFeatures; }

  read(offset: number, data: Buffer): void {
    if (offset >= R.CONFIG) { this.backend.readConfig(offset - R.CONFIG, data.length).copy(data); return; }
    let v = 0;
    const q = this.queues[this.queueSel];
    switch (offset) {
      case R.MAGIC_VALUE: v = VIRTIO_MMIO_MAGIC; break;
      case R.VERSION: v = VERSION; break;
      case R.DEVICE_ID: v = this.backend.deviceId; break;
      case R.VENDOR_ID: v = VENDOR_ID; break;
      case R.DEVICE_FEATURES: v = this.deviceFeaturesSel < 2 ? Number((this.backend.guestFeatures >> BigInt(32 * this.deviceFeaturesSel)) & 0xffffffffn) : 0; break;
      case R.QUEUE_NUM_MAX: v = q ? this.backend.queueMax(this.queueSel) : 0; break;
      case R.QUEUE_READY: v = q?.ready ? 1 : 0; break;
      case R.INTERRUPT_STATUS: v = VIRTIO_MMIO_INT_VRING; break; // see the header comment
      case R.STATUS: v = this.status; break;
      case R.CONFIG_GENERATION: v = 0; break; // config never changes under the driver
      default: v = 0;
    }
    data.fill(0);
    const n = Math.min(data.length, 4);
    data.writeUIntLE((v >>> 0) % 2 ** (8 * n), 0, n);
  }

  write(offset: number, data: Buffer): void {
    if (offset >= R.CONFIG) return; // config writes: nothing writable in the profiles we serve
    const v = data.length >= 4 ? data.readUInt32LE(0) : data.readUIntLE(0, data.length);
    const q = this.queues[this.queueSel];
    const setHalf = (cur: bigint, high: boolean) => high ? (cur & 0xffffffffn) | (BigInt(v) << 32n) : (cur & ~0xffffffffn) | BigInt(v);
    switch (offset) {
      case R.DEVICE_FEATURES_SEL: this.deviceFeaturesSel = v; break;
      case R.DRIVER_FEATURES:
        if (this.driverFeaturesSel < 2) {
          const shift = BigInt(32 * this.driverFeaturesSel);
          this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(v) << shift);
        }
        break;
      case R.DRIVER_FEATURES_SEL: this.driverFeaturesSel = v; break;
      case R.QUEUE_SEL: this.queueSel = v; break;
      case R.QUEUE_NUM: if (q) q.num = v; break;
      case R.QUEUE_READY: if (q) q.ready = v === 1; break;
      case R.INTERRUPT_ACK: break; // nothing to clear (see the header comment)
      case R.STATUS: this.writeStatus(v & 0xff); break;
      case R.QUEUE_DESC_LOW: if (q) q.desc = setHalf(q.desc, false); break;
      case R.QUEUE_DESC_HIGH: if (q) q.desc = setHalf(q.desc, true); break;
      case R.QUEUE_AVAIL_LOW: if (q) q.avail = setHalf(q.avail, false); break;
      case R.QUEUE_AVAIL_HIGH: if (q) q.avail = setHalf(q.avail, true); break;
      case R.QUEUE_USED_LOW: if (q) q.used = setHalf(q.used, false); break;
      case R.QUEUE_USED_HIGH: if (q) q.used = setHalf(q.used, true); break;
      default: break; // QueueNotify without an ioeventfd, or read-only registers
    }
  }

  private writeStatus(status: number): void {
    if (status === 0) {
      this.backend.setStatus(0, 0n);
      this.status = 0;
      this.driverFeatures = 0n;
      this.deviceFeaturesSel = this.driverFeaturesSel = this.queueSel = 0;
      this.resetQueues();
      return;
    }
    this.status = this.backend.setStatus(status, this.driverFeatures);
  }

  save(): VirtioMmioState {
    return {
      deviceFeaturesSel: this.deviceFeaturesSel, driverFeaturesSel: this.driverFeaturesSel, driverFeatures: this.driverFeatures.toString(16),
      queueSel: this.queueSel, status: this.status,
      queues: this.queues.map((q) => ({ num: q.num, ready: q.ready, desc: q.desc.toString(16), avail: q.avail.toString(16), used: q.used.toString(16) })),
    };
  }

  load(s: VirtioMmioState): void {
    this.deviceFeaturesSel = s.deviceFeaturesSel; this.driverFeaturesSel = s.driverFeaturesSel;
    this.driverFeatures = BigInt(`0x${s.driverFeatures}`); this.queueSel = s.queueSel; this.status = s.status;
    this.queues = s.queues.map((q) => ({ num: q.num, ready: q.ready, desc: BigInt(`0x${q.desc}`), avail: BigInt(`0x${q.avail}`), used: BigInt(`0x${q.used}`) }));
  }
}
