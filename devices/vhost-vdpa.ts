// vhost-vdpa frontend: a virtio-mmio device whose data path is a /dev/vhost-vdpa-N (or the embedded
// FUSE-served equivalent). Order of operations after QEMU's hw/virtio/vhost-vdpa.c; the live-update
// sequence after docs/vhost-vdpa-live-update.md §4.2 (fast path: NEW_OWNER + batched REMAP) and §4.4
// (slow fallback).
import { writeSync } from 'node:fs';
import { open, close, eventfd, O_RDWR, O_CLOEXEC, EFD_CLOEXEC, EFD_NONBLOCK, SyscallError } from '../src/libc.js';
import { vhost, BACKEND_F, IOTLB, IOTLB_PERM, VIRTIO_F, VIRTIO_STATUS as S } from '../src/vhost.js';
import type { Vm } from '../src/accel/index.js';
import { cprSaveFd, cprDeleteFd, cprFindFd } from '../src/cpr-fds.js';
import type { GuestMemory } from '../src/memory.js';
import { VirtioMmio, VIRTIO_MMIO, type VirtioBackend, type VirtioMmioState } from './virtio-mmio.js';

/** What we negotiate when offered (QEMU's set plus PERSIST, so a reset keeps the parent's map). */
const WANTED_BACKEND = BACKEND_F.IOTLB_MSG_V2 | BACKEND_F.IOTLB_BATCH | BACKEND_F.SUSPEND | BACKEND_F.RESUME
  | BACKEND_F.IOTLB_PERSIST | BACKEND_F.NEW_OWNER | BACKEND_F.IOTLB_REMAP;

export type UpdatePath = 'new-owner' | 'fallback';

/** One IOTLB entry: guest RAM region `region` at iova = its guest-physical address. */
export interface Mapping { iova: number; size: number; region: number }

/** Saved across exec (fds are named ('vdpa', index), never stored as numbers). */
export interface VdpaState {
  index: number; devicePath: string; gsi: number; base: number;
  deviceId: number; deviceFeatures: string; offered: string; negotiated: string;
  vqs: number; queueMax: number; configSize: number;
  transport: VirtioMmioState;
  /** Device status before the update, and whether it was reset (reset-style) for it. */
  status: number; reset: boolean;
  bases: number[];
  mappings: Mapping[];
  path: UpdatePath;
}

export interface Eventfds { kick: number[]; call: number[] }

export interface RestoreTimings { newOwner?: number; remap?: number; map?: number; reopen?: number; rings: number; total: number }

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const hex = (v: bigint) => v.toString(16);
const big = (h: string) => BigInt(`0x${h}`);

export class VhostVdpa implements VirtioBackend {
  readonly transport: VirtioMmio;
  private kick: number[] = [];
  private call: number[] = [];
  /** Status as last set on the device (the guest's view is the transport's). */
  private deviceStatus = 0;

  private constructor(
    public fd: number, readonly index: number, readonly devicePath: string, readonly gsi: number, readonly base: number,
    readonly deviceId: number, readonly deviceFeatures: bigint, readonly offered: bigint, readonly negotiated: bigint,
    readonly vqs: number, readonly maxQueueSize: number, readonly configSize: number, readonly mappings: Mapping[],
  ) {
    this.transport = new VirtioMmio(base, this, vqs);
  }

  /** Take the slow path even though the device offers NEW_OWNER (benchmarks compare the two). */
  forceFallback = false;
  get updatePath(): UpdatePath { return !this.forceFallback && (this.offered & BACKEND_F.NEW_OWNER) ? 'new-owner' : 'fallback'; }
  private has(bit: bigint): boolean { return (this.negotiated & bit) !== 0n; }

  /** Opens and owns a device for a fresh VM: probe, negotiate, map all guest RAM (batched). */
  static open(path: string, index: number, vm: Vm, mem: GuestMemory, gsi: number, base: number): VhostVdpa {
    const fd = openDevice(path);
    try {
      vhost.setOwner(fd);
      const dev = VhostVdpa.probe(fd, index, path, gsi, base, mem);
      try { dev.mapAll(mem, IOTLB.UPDATE); } catch (e) {
        throw new Error(`${path}: mapping guest RAM failed: ${(e as Error).message} (a pinning device needs RLIMIT_MEMLOCK ≥ guest RAM)`);
      }
      dev.wire(vm);
      return dev;
    } catch (e) {
      close(fd);
      throw e;
    }
  }

  private static probe(fd: number, index: number, path: string, gsi: number, base: number, mem: GuestMemory): VhostVdpa {
    const offered = vhost.getBackendFeatures(fd);
    const negotiated = offered & WANTED_BACKEND;
    vhost.setBackendFeatures(fd, negotiated);
    const range = vhost.getIovaRange(fd);
    const mappings = mem.regions.map((r, i) => ({ iova: r.gpa, size: r.size, region: i }));
    for (const m of mappings) {
      if (BigInt(m.iova) < range.first || BigInt(m.iova + m.size - 1) > range.last) {
        throw new Error(`${path}: guest RAM at 0x${m.iova.toString(16)} is outside the device's IOVA range`);
      }
    }
    return new VhostVdpa(fd, index, path, gsi, base, vhost.getDeviceId(fd), vhost.getFeatures(fd), offered, negotiated,
      vhost.getVqsCount(fd), vhost.getVringNum(fd), vhost.getConfigSize(fd), mappings);
  }

  /**
   * One UPDATE (or REMAP) per RAM region, in one batch when the device batches, even for one
   * message: the posted REMAP outside a batch leaves the parent on the old address (quirk Q1,
   * docs/vhost-vdpa-live-update.md). Unbatched, a one-region REMAP would save 0.5 ms of cpr-transfer
   * on the embedded device (measured 2026-11-29) and break the patched kernel.
   */
  private mapAll(mem: GuestMemory, type: number): void {
    const batch = this.has(BACKEND_F.IOTLB_BATCH);
    const msg = (t: number, iova = 0, size = 0, uaddr = 0, perm = 0) =>
      vhost.iotlb(this.fd, { type: t, iova: BigInt(iova), size: BigInt(size), uaddr: BigInt(uaddr), perm });
    if (batch) msg(IOTLB.BATCH_BEGIN);
    for (const m of this.mappings) {
      msg(type, m.iova, m.size, mem.regions[m.region].hostAddr, type === IOTLB.REMAP ? 0 : IOTLB_PERM.RW);
    }
    if (batch) msg(IOTLB.BATCH_END);
  }

  /**
   * Kick eventfds as ioeventfds on QueueNotify (datamatch = queue), call eventfds as irqfds.
   * `kept`: the previous image's eventfds (the device still holds them), else new ones.
   */
  private wire(vm: Vm, kept?: Eventfds): void {
    this.vm = vm;
    for (let q = 0; q < this.vqs; q++) {
      const k = kept?.kick[q] ?? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), c = kept?.call[q] ?? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      vm.ioeventfd(k, this.base + VIRTIO_MMIO.QUEUE_NOTIFY, 4, { datamatch: q }, true);
      vm.irqfd(c, this.gsi, true);
      this.kick.push(k); this.call.push(c);
    }
  }
  private vm?: Vm;

  /**
   * An eventfd can back one irqfd at a time across all VMs (Linux 6.16+: EBUSY), and a VM's
   * irqfds go away asynchronously when it is destroyed. So the image handing its call eventfds
   * on unbinds them first (a deassign waits for the unbinding to finish).
   */
  private setIrqfds(assign: boolean): void {
    for (const c of this.call) this.vm!.irqfd(c, this.gsi, assign);
  }

  // ---- VirtioBackend ----
  queueMax(i: number): number { return i < this.vqs ? this.maxQueueSize : 0; }
  readConfig(offset: number, len: number): Buffer {
    if (offset + len > this.configSize) return Buffer.alloc(len);
    try { return vhost.getConfig(this.fd, offset, len); } catch (e) {
      this.report('config read', e); // device gone (its daemon restarting): the driver reads zeros meanwhile
      return Buffer.alloc(len);
    }
  }

  setStatus(status: number, driverFeatures: bigint): number {
    try {
      if (status === 0) { this.setDeviceStatus(0); return 0; }
      const prev = this.deviceStatus;
      if ((status & S.FEATURES_OK) && !(prev & S.FEATURES_OK)) {
        vhost.setFeatures(this.fd, driverFeatures | (this.deviceFeatures & VIRTIO_F.ACCESS_PLATFORM));
      }
      if ((status & S.DRIVER_OK) && !(prev & S.DRIVER_OK)) this.startQueues([]);
      this.setDeviceStatus(status);
      return vhost.getStatus(this.fd);
    } catch (e) {
      this.report(`status 0x${status.toString(16)}`, e);
      return status | S.NEEDS_RESET; // the driver sees a device that wants a reset, not a hung VMM
    }
  }

  /** One stderr line per kind of failure the guest's driver cannot see the reason of (not one per access). */
  private reported = new Set<string>();
  private report(what: string, e: unknown): void {
    const line = `minivmm: vdpa device ${this.index} (${this.devicePath}): ${what} failed: ${(e as Error).message}`;
    if (this.reported.has(line)) return;
    this.reported.add(line);
    process.stderr.write(`${line}\n`);
  }

  /** ACCESS_PLATFORM is between us and the device (IOVA = guest-physical); the guest never sees it. */
  get guestFeatures(): bigint { return this.deviceFeatures & ~VIRTIO_F.ACCESS_PLATFORM; }

  private setDeviceStatus(s: number): void { vhost.setStatus(this.fd, s); this.deviceStatus = s; }

  /** Programs every ready queue; `bases` resumes ring indexes after an update. */
  private startQueues(bases: number[]): void {
    for (const i of this.readyQueues()) {
      const q = this.transport.queues[i];
      vhost.setVringNum(this.fd, i, q.num);
      vhost.setVringAddr(this.fd, { index: i, flags: 0, desc: q.desc, used: q.used, avail: q.avail, log: 0n });
      vhost.setVringBase(this.fd, i, bases[i] ?? 0);
      vhost.setVringKick(this.fd, i, this.kick[i]);
      vhost.setVringCall(this.fd, i, this.call[i]);
      vhost.setVringEnable(this.fd, i, true);
    }
  }

  /** Walks the status back up to `status` with the saved features and ring bases (reset-style / fallback). */
  private reinit(status: number, bases: number[]): void {
    if (!status) return;
    this.setDeviceStatus(S.ACKNOWLEDGE);
    if (status & S.DRIVER) this.setDeviceStatus(S.ACKNOWLEDGE | S.DRIVER);
    if (status & S.FEATURES_OK) {
      vhost.setFeatures(this.fd, this.transport.negotiatedFeatures | (this.deviceFeatures & VIRTIO_F.ACCESS_PLATFORM));
      this.setDeviceStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
    }
    if (status & S.DRIVER_OK) {
      this.startQueues(bases);
      this.setDeviceStatus(status);
    }
  }

  // ---- live update ----

  /**
   * Old image, vCPUs paused: quiesce and record. SUSPEND, read the ring bases; reset only when the
   * device cannot RESUME. No INVALIDATE: the mappings (and pins) must survive. The ring bases
   * matter only to a device brought up again from scratch (a reset, or a new image falling back
   * to the slow path after NEW_OWNER failed); `slowPathPossible` false (cpr-transfer: the old
   * process still holds the device, so the new one cannot reopen it) skips reading them when the
   * device can RESUME, one round trip through the device per ring.
   */
  prepareUpdate(slowPathPossible = true): VdpaState {
    const status = this.deviceStatus;
    const running = (status & S.DRIVER_OK) !== 0;
    let bases: number[] = [];
    let reset = false;
    if (running) {
      if (this.has(BACKEND_F.SUSPEND)) vhost.suspend(this.fd);
      reset = !this.has(BACKEND_F.RESUME) || this.updatePath === 'fallback';
      bases = this.transport.queues.map(() => 0);
      if (reset || slowPathPossible) for (const i of this.readyQueues()) bases[i] = vhost.getVringBase(this.fd, i);
      if (reset && this.updatePath === 'new-owner') this.setDeviceStatus(0);
    }
    this.keepFds();
    if (this.updatePath === 'new-owner') this.setIrqfds(false);
    return {
      index: this.index, devicePath: this.devicePath, gsi: this.gsi, base: this.base,
      deviceId: this.deviceId, deviceFeatures: hex(this.deviceFeatures), offered: hex(this.offered), negotiated: hex(this.negotiated),
      vqs: this.vqs, queueMax: this.maxQueueSize, configSize: this.configSize,
      transport: this.transport.save(), status, reset, bases, mappings: this.mappings, path: this.updatePath,
    };
  }

  /**
   * Old image, the update did not happen: restart the device. `ownerMayHaveMoved`: a cpr-transfer
   * whose new process may have taken the device over (NEW_OWNER, REMAP) before it failed.
   */
  abortUpdate(saved: VdpaState, mem: GuestMemory, ownerMayHaveMoved: boolean): void {
    if (ownerMayHaveMoved) this.takeBack(saved, mem); else this.restart(saved);
  }

  /** The exec failed or was cancelled: we are still the owner and our addresses are valid. */
  private restart(saved: VdpaState): void {
    if (saved.path === 'new-owner') this.setIrqfds(true);
    if (!(saved.status & S.DRIVER_OK)) return;
    if (saved.reset && saved.path === 'new-owner') this.reinit(saved.status, saved.bases);
    else if (this.has(BACKEND_F.RESUME)) vhost.resume(this.fd);
    this.notifyAll();
  }

  /**
   * Old image after a failed cpr-transfer (the new process is dead): take the device back. It may
   * be running under the new process's ownership and addresses, so: SUSPEND first (no owner
   * check), NEW_OWNER (EBUSY: we never lost it), REMAP to our own addresses, our eventfds, RESUME.
   */
  private takeBack(saved: VdpaState, mem: GuestMemory): void {
    const running = (saved.status & S.DRIVER_OK) !== 0;
    // The dead process's VM may still hold our call eventfds as irqfds (it is torn down
    // asynchronously): take fresh ones; RESUME below points the device at them.
    for (const c of this.call) { try { close(c); } catch { /* closed */ } }
    this.call = this.call.map(() => eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    this.setIrqfds(true);
    if (running && this.has(BACKEND_F.SUSPEND)) vhost.suspend(this.fd);
    try { vhost.newOwner(this.fd); } catch (e) { if (!(e instanceof SyscallError && e.code === 'EBUSY')) throw e; }
    if (this.offered & BACKEND_F.IOTLB_REMAP) this.mapAll(mem, IOTLB.REMAP);
    if (!running) return;
    if (saved.reset) this.reinit(saved.status, saved.bases); else this.resumeWithOwnEventfds();
    this.notifyAll();
  }

  /** A suspended device that kept its rings: point kick/call at this process's eventfds, RESUME. */
  private resumeWithOwnEventfds(): void {
    for (const i of this.readyQueues()) {
      vhost.setVringKick(this.fd, i, this.kick[i]);
      vhost.setVringCall(this.fd, i, this.call[i]);
    }
    vhost.resume(this.fd);
  }

  /** Queues the driver made ready that the device has. */
  private readyQueues(): number[] {
    return this.transport.queues.flatMap((q, i) => (q.ready && i < this.vqs ? [i] : []));
  }

  /**
   * Registers what an update keeps. The fast path keeps the device fd and its kick/call eventfds:
   * the device goes on polling and signalling the same files, so the new image only wires them
   * into its VM (no SET_VRING_KICK/CALL round trips in the blackout; docs/vhost-vdpa-live-update.md
   * §4.2: the queues need re-pointing only if the eventfds changed). The slow path keeps none:
   * closing the fd releases the device for the new image to open.
   */
  private keepFds(keep = this.updatePath === 'new-owner'): void {
    const set = (name: string, id: number, fd: number) => (keep ? cprSaveFd(name, id, fd) : cprDeleteFd(name, id));
    set('vdpa', this.index, this.fd);
    for (let q = 0; q < this.vqs; q++) { set(`vdpa-kick-${this.index}`, q, this.kick[q]); set(`vdpa-call-${this.index}`, q, this.call[q]); }
  }

  /** The fast path's fds as the old image registered them, if they all came along. */
  private static inherited(s: VdpaState): { fd: number | null; eventfds?: Eventfds } {
    const fd = s.path === 'new-owner' ? cprFindFd('vdpa', s.index) ?? null : null;
    const kick = Array.from({ length: s.vqs }, (_, q) => cprFindFd(`vdpa-kick-${s.index}`, q));
    const call = Array.from({ length: s.vqs }, (_, q) => cprFindFd(`vdpa-call-${s.index}`, q));
    const all = (xs: (number | undefined)[]): xs is number[] => xs.every((x) => x !== undefined);
    return { fd, eventfds: all(kick) && all(call) ? { kick, call } : undefined };
  }

  /**
   * New image. Fast path: NEW_OWNER on the inherited fd, REMAP every entry in one batch when the
   * device keeps virtual addresses, re-point kick/call at the new VM and RESUME (or re-walk the
   * status after a reset). Fallback: reopen, SET_OWNER, UPDATE everything (re-pins), re-walk.
   */
  static restore(s: VdpaState, vm: Vm, mem: GuestMemory, inject?: string): { dev: VhostVdpa; timings: RestoreTimings; path: UpdatePath; note?: string } {
    const t0 = process.hrtime.bigint();
    const { fd: inheritedFd, eventfds: inheritedEventfds } = VhostVdpa.inherited(s);
    const timings: RestoreTimings = { rings: 0, total: 0 };
    let path: UpdatePath = s.path;
    let note: string | undefined;
    let dev: VhostVdpa | undefined;
    if (s.path === 'new-owner' && inheritedFd !== null) {
      try {
        if (inject === 'fail-before-new-owner') throw new Error('injected failure before VHOST_NEW_OWNER');
        const t = process.hrtime.bigint();
        vhost.newOwner(inheritedFd);
        timings.newOwner = ms(t);
        dev = VhostVdpa.fromState(s, inheritedFd);
        if (dev.offered & BACKEND_F.IOTLB_REMAP) {
          const tr = process.hrtime.bigint();
          dev.mapAll(mem, IOTLB.REMAP);
          timings.remap = ms(tr);
        }
      } catch (e) {
        // Leave the device unowned rather than wedged: closing the last fd releases it.
        try { close(inheritedFd); } catch { /* already closed */ }
        if (inject === 'fail-before-new-owner') throw new Error(`vdpa device ${s.index} (${s.devicePath}): ${(e as Error).message}; its fd was closed, so the device is released`);
        note = `fast path failed (${(e as Error).message}); device released and re-acquired by the slow path`;
        process.stderr.write(`minivmm: vdpa device ${s.index}: ${note}\n`);
        dev = undefined;
        path = 'fallback';
      }
    }
    if (!dev) {
      path = 'fallback';
      const tr = process.hrtime.bigint();
      const fd = openDevice(s.devicePath, 2000);
      timings.reopen = ms(tr);
      try {
        vhost.setOwner(fd);
        vhost.setBackendFeatures(fd, big(s.negotiated) & vhost.getBackendFeatures(fd));
        dev = VhostVdpa.fromState(s, fd);
        const tm = process.hrtime.bigint();
        dev.mapAll(mem, IOTLB.UPDATE);
        timings.map = ms(tm);
      } catch (e) { close(fd); throw e; }
    }
    const tq = process.hrtime.bigint();
    try {
      const kept = path === 'new-owner' && inheritedEventfds?.kick.length === s.vqs && inheritedEventfds.call.length === s.vqs ? inheritedEventfds : undefined;
      if (!kept && inheritedEventfds) for (const fd of [...inheritedEventfds.kick, ...inheritedEventfds.call]) { try { close(fd); } catch { /* closed */ } }
      dev.wire(vm, kept);
      if (path === 'new-owner' && !s.reset) {
        // The device kept its state: a running one RESUMEs (re-pointed at new eventfds first, if
        // the old ones did not come along); one the driver had not started yet (status <
        // DRIVER_OK) carries on where it was.
        dev.deviceStatus = s.status;
        if (s.status & S.DRIVER_OK) { if (kept) vhost.resume(dev.fd); else dev.resumeWithOwnEventfds(); }
      } else {
        dev.reinit(s.status, s.bases); // a reset or a fresh open: walk the status back up
      }
    } catch (e) {
      throw new Error(`vdpa device ${s.index} (${path}, saved status 0x${s.status.toString(16)}${s.reset ? ', reset' : ''}): ${(e as Error).message}`);
    }
    dev.keepFds();
    timings.rings = ms(tq);
    timings.total = ms(t0);
    return { dev, timings, path, note };
  }

  private static fromState(s: VdpaState, fd: number): VhostVdpa {
    const dev = new VhostVdpa(fd, s.index, s.devicePath, s.gsi, s.base, s.deviceId, big(s.deviceFeatures), big(s.offered), big(s.negotiated),
      s.vqs, s.queueMax, s.configSize, s.mappings);
    dev.transport.load(s.transport);
    return dev;
  }

  /**
   * The device's server was restarted (the embedded daemon died): the device is a new one that
   * knows nothing. Open it again, map all RAM, and walk it up to where the driver has it, each
   * ring resuming at its used index: requests in flight when the old one died are processed
   * again (what vhost-user back-end reconnection does). Our eventfds, still wired to KVM, stay.
   */
  reattach(mem: GuestMemory): void {
    try { close(this.fd); } catch { /* a dead connection */ }
    const fd = openDevice(this.devicePath, 2000);
    try {
      vhost.setOwner(fd);
      vhost.setBackendFeatures(fd, this.negotiated & vhost.getBackendFeatures(fd));
    } catch (e) { close(fd); throw e; }
    this.fd = fd;
    this.deviceStatus = 0;
    this.mapAll(mem, IOTLB.UPDATE);
    const bases = this.transport.queues.map((q) => (q.ready ? mem.view(Number(q.used) + 2, 2).readUInt16LE(0) : 0));
    this.reinit(this.transport.status & (S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK), bases);
    this.notifyAll();
  }

  /** After the vCPUs resume: one kick per queue and one interrupt, for notifications lost in the pause. */
  notifyAll(): void {
    const one = Buffer.alloc(8); one.writeBigUInt64LE(1n);
    for (const i of this.readyQueues()) {
      writeSync(this.kick[i], one);
      writeSync(this.call[i], one);
    }
  }

  /** Releases the device (the last close resets it and drops its mappings) and our eventfds. */
  close(): void {
    this.keepFds(false);
    for (const fd of [...this.kick, ...this.call, this.fd]) { try { close(fd); } catch { /* closed */ } }
    this.kick = []; this.call = [];
  }
}

/** open(2) of a vhost-vdpa node; EBUSY (the previous holder still closing) is retried until `waitMs`. */
export function openDevice(path: string, waitMs = 0): number {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try { return open(path, O_RDWR | O_CLOEXEC); } catch (e) {
      if (!(e instanceof SyscallError && e.code === 'EBUSY') || Date.now() >= deadline) throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
    }
  }
}
