// The parent device model shared by net and blk (vdpa_sim's struct vdpasim): status, driver
// features, virtqueues, config space, vq groups → address spaces, running/pending_kick.
import type { Dma } from './dma.js';
import { Vq, RingError } from './virtqueue.js';
import { writeRaw } from './sys.js';
import { addressOf } from '../../src/libc.js';
import { VIRTIO_F, VIRTIO_STATUS } from '../../src/vhost.js';

const { DRIVER_OK } = VIRTIO_STATUS;

export interface SimProfile {
  deviceId: number;
  features: bigint; // offered virtio features
  vringMax: number;
  nvqs: number;
  nas: number;
  ngroups: number;
  vqGroup: (vq: number) => number;
  config: Buffer; // initial config space
}

const one = Buffer.alloc(8);
one.writeBigUInt64LE(1n);
const oneAddr = addressOf(one);
/**
 * Keeps `one` reachable: only its address is used below, and a Buffer nothing refers to is freed
 * (the call eventfds then got whatever the memory held: lost or garbage interrupts).
 */
export const CALL_VALUE = one;

export interface SimCounters { framesLooped: number; framesDropped: number; blocksRead: number; blocksWritten: number; ringErrors: number; calls: number; kicks: number }

export abstract class SimDevice {
  status = 0;
  features = 0n; // driver features
  running = false;
  pendingKick = false;
  readonly vqs: Vq[];
  config: Buffer;
  readonly groupAsid: number[];
  configCallFd: number | null = null;
  lastRingError: string | null = null;
  readonly counters: SimCounters = { framesLooped: 0, framesDropped: 0, blocksRead: 0, blocksWritten: 0, ringErrors: 0, calls: 0, kicks: 0 };
  /** Set by the vhost layer: the parent's view of address space `asid` as a Dma. */
  dmaForAsid: (asid: number) => Dma = () => { throw new Error('no dma'); };
  log: (msg: string) => void = () => {};

  constructor(readonly profile: SimProfile) {
    this.vqs = Array.from({ length: profile.nvqs }, () => new Vq());
    this.config = Buffer.from(profile.config);
    this.groupAsid = new Array(profile.ngroups).fill(0);
  }

  dmaFor(vq: number): Dma { return this.dmaForAsid(this.groupAsid[this.profile.vqGroup(vq)] ?? 0); }
  /** Whether the driver negotiated the feature `mask`. */
  has(mask: bigint): boolean { return (this.features & mask) !== 0n; }

  /** vdpasim_do_reset. */
  reset(): void {
    for (const vq of this.vqs) vq.reset();
    this.running = false; this.pendingKick = false;
    this.features = 0n; this.status = 0;
    this.groupAsid.fill(0);
  }
  setStatus(s: number): void { this.status = s; this.running = (s & DRIVER_OK) !== 0; }
  /** vdpasim_set_driver_features: DMA mapping must be done by the driver. */
  setFeatures(f: bigint): boolean {
    if ((f & VIRTIO_F.ACCESS_PLATFORM) === 0n) return false;
    this.features = f & this.profile.features;
    return true;
  }
  setVqReady(i: number, ready: boolean): void {
    const vq = this.vqs[i];
    const was = vq.ready;
    vq.ready = ready;
    if (ready && !was) vq.start();
  }
  suspend(): void { this.running = false; }
  resume(): void {
    this.running = true;
    if (this.pendingKick) { this.pendingKick = false; this.kickAll(); }
  }
  /** vdpasim_kick_vq: deferred while suspended after DRIVER_OK. Returns whether work is due. */
  kick(i: number): void {
    this.counters.kicks++;
    if (!this.running && (this.status & DRIVER_OK)) { this.pendingKick = true; return; }
    if (this.vqs[i]?.ready) this.schedule();
  }
  kickAll(): void { for (let i = 0; i < this.vqs.length; i++) this.kick(i); }

  /** Work is run by the event loop after the current request (like schedule_work). */
  workPending = false;
  schedule(): void { this.workPending = true; }
  /** Run the device; returns true if it stopped early and wants to run again. */
  run(): boolean {
    this.workPending = false;
    if (!this.running || !(this.status & DRIVER_OK)) return false;
    try {
      return this.work();
    } catch (e) {
      if (e instanceof RingError) this.ringError(e.message);
      else { this.counters.ringErrors++; this.lastRingError = (e as Error).message; this.log(`device work failed: ${(e as Error).stack}`); }
      return false;
    }
  }
  protected abstract work(): boolean;
  /** A ring the device gave up on for this run (what vringh_bad logs); counted, and shown in the status. */
  protected ringError(msg: string): void {
    this.counters.ringErrors++;
    this.lastRingError = msg;
    this.log(`ring error: ${msg}`);
  }
  /** The device is deleted: release what it holds (a disk file). */
  destroy(): void {}

  signal(vq: Vq): void {
    if (vq.callFd === null) return;
    this.counters.calls++;
    writeRaw(vq.callFd, oneAddr, 8);
  }
}
