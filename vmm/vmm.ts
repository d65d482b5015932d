// The VMM process: one machine, its devices, its monitor, and the live update it goes through.
// A VM is assembled in one of two ways, which then share everything else (monitor, signals,
// daemon supervision, exit hooks): Vmm.start (a fresh boot) and Vmm.fromState (the new image of
// a live update). The update itself is owned here: beginUpdate pauses and saves, abortUpdate puts
// everything back; the transports in cpr/ only carry the state and the fds between processes.
import { unlinkSync } from 'node:fs';
import type { Accelerator, Vm } from '../src/accel/index.js';
import { KvmAccelerator } from '../src/accel/kvm.js';
import { GuestMemory } from '../src/memory.js';
import { cprFds, cprFindFd, cprSaveFd, type NamedFd } from '../src/cpr-fds.js';
import { VhostVdpa, type VdpaState } from '../devices/vhost-vdpa.js';
import { Machine } from './machine.js';
import { QmpServer } from './qmp.js';
import { installCommands, shutdownData, type MonitorTarget, type MigrationParameters, type ShutdownCause } from './monitor.js';
import { log, setLogLevel } from './log.js';
import { Migration, type UpdateMode, type UpdateResult } from './migration.js';
import { parseVdpaSpec, resolveVdpaPaths, attachVdpa, stopDaemon, watchDaemon, restartDaemonIfGone, type DaemonRef } from './vdpa.js';
import { StateError, type MachineConfig, type UpdateRecord, type VmmState } from './state.js';
import type { VcpuEvent } from './vcpus.js';

/** Signals recorded before a Vmm exists; once one does, `forward` takes the later ones. */
export interface EarlySignals { got: NodeJS.Signals[]; forward?: (sig: NodeJS.Signals) => void }

/** Records SIGTERM/SIGINT from now on, for the Vmm to take over (a process restoring a guest must not die half-way). */
export function recordSignals(early: EarlySignals = { got: [] }): EarlySignals {
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => (early.forward ? early.forward(sig) : early.got.push(sig)));
  return early;
}

const signalExitCode = (sig: NodeJS.Signals): number => 128 + (sig === 'SIGTERM' ? 15 : 2);
const now = (): bigint => process.hrtime.bigint();
const ms = (a: bigint, b: bigint): number => Number(b - a) / 1e6;
const round = (x: number): number => Math.round(x * 100) / 100;
/** Only the last few update records travel on: the state (and so the blackout) must not grow with the VM's age. */
const HISTORY_KEPT = 16;

export const VERSION = { major: 0, minor: 1, micro: 0, package: 'minivmm 0.1.0' };

/** How each migration mode is carried out (cpr/exec.ts, cpr/transfer.ts); `uri` as given to migrate. */
export type Migrators = Record<UpdateMode, (vmm: Vmm, uri: string) => Promise<void>>;

/** An update under way in the old image: the guest paused, the devices quiesced, the state saved. */
export interface PreparedUpdate {
  wasRunning: boolean;
  devices: [VhostVdpa, VdpaState][];
  state: VmmState;
  /** Every fd the new image needs, by name. */
  fds: NamedFd[];
}

/** When the state left the old image and reached this one (ns, CLOCK_MONOTONIC), for the blackout's phases. */
export interface Arrival {
  mode: UpdateMode;
  saved: bigint; // old image: state written
  sent: bigint; // old image: execve called / message sent
  arrived: bigint; // this image: first JS statement / message received
  loaded: bigint; // this image: modules loaded
  decoded?: bigint; // this image: state decoded (then the accelerator opened); absent: at once
  /** cpr-exec: whether a keeper held the old image's address space until the resume, or the exec tore it down. */
  oldAddressSpace?: UpdateResult['oldAddressSpace'];
}

export interface RestoreOptions {
  /** A VM made ahead of the state, its RAM registered (cpr-transfer). */
  vm?: Vm;
  signals?: EarlySignals;
  /** Fault injection (tests, demo): 'new-process-crash', 'new-process-hang', 'fail-before-new-owner'. */
  inject?: string;
  /** After every device is restored, before the vCPUs run: a transfer's last point of no return. */
  beforeResume?: () => void;
  /** Right after the vCPUs run again. */
  afterResume?: () => void;
}

export class Vmm implements MonitorTarget {
  machine!: Machine;
  vdpa: VhostVdpa[] = [];
  /** The embedded device daemon this VM started (it outlives our exec; stopped when the VM ends). */
  daemon?: DaemonRef;
  qmp?: QmpServer;
  params: MigrationParameters = { mode: 'normal', cprExecCommand: null, vdpaPath: 'auto', transferTimeoutMs: 5000 };
  /** Migration capabilities (QMP), the process's own as in QEMU: a new image starts with them off. */
  capabilities = { events: false };
  readonly migration = new Migration((status) => this.event('MIGRATION', { status }));
  /** How many live updates this VM went through, and the last few of them (both carried in the state). */
  updates = 0;
  history: UpdateRecord['history'] = [];
  private exiting = false;
  /** The VM is being shut down (exit hooks running). */
  get stopping(): boolean { return this.exiting; }
  exitHooks: (() => Promise<void> | void)[] = [() => stopDaemon(this.daemon)];

  private constructor(readonly accel: Accelerator, private migrators: Migrators) {}

  // ---- assembling a VM ----

  /** A fresh VM: start the device daemon, build the machine, attach the devices, load the guest, run. */
  static async start(config: MachineConfig, accel: Accelerator, migrators: Migrators): Promise<Vmm> {
    const vmm = new Vmm(accel, migrators);
    const { paths, daemon } = await resolveVdpaPaths(config.vdpa.map(parseVdpaSpec), config.memory);
    vmm.daemon = daemon;
    try {
      vmm.machine = Machine.create(config, accel, vmm.onVcpuEvent);
      const { devices, boot } = attachVdpa(vmm.machine, paths);
      vmm.vdpa = devices;
      vmm.machine.loadGuest(boot);
    } catch (e) {
      await stopDaemon(daemon);
      throw e;
    }
    await vmm.launch();
    vmm.machine.start();
    (await log()).debug({ guest: config.guest, memory: config.memory, smp: config.smp, accel: accel.kind }, 'guest started');
    return vmm;
  }

  /**
   * The new image of a live update: rebuild the VM from the state over the inherited fds (found in
   * the preserved-fd registry), take each device over, resume the guest, then everything that can
   * wait until it runs (monitor, logger). The accelerator may differ from the one that saved it.
   */
  static async fromState(state: VmmState, accel: Accelerator, migrators: Migrators, arrival: Arrival, opts: RestoreOptions = {}): Promise<Vmm> {
    const t = { decoded: now(), vm: 0n, devices: 0n, resumed: 0n };
    const vmm = new Vmm(accel, migrators);
    const ms0 = state.machine;
    const found = (name: string, id: number): number => {
      const fd = cprFindFd(name, id);
      if (fd === undefined) throw new StateError(`CPR state names no fd (${name}, ${id})`);
      return fd;
    };
    const serialFd = ms0.config.serial === 'stdio' ? 1 : found('serial', 0);
    const mem = opts.vm?.memory ?? GuestMemory.adopt(ms0.memory.map((r, i) => ({ ...r, fd: found('ram', i) })));
    vmm.machine = Machine.restore(ms0, mem, serialFd, accel, vmm.onVcpuEvent, opts.vm);
    t.vm = now();
    vmm.daemon = state.daemon;
    const devices: UpdateResult['devices'] = [];
    for (const s of state.vdpa) {
      let r: ReturnType<typeof VhostVdpa.restore>;
      try {
        r = VhostVdpa.restore(s, vmm.machine.vm, mem, opts.inject);
      } catch (e) {
        // The embedded daemon died during the update: start it again and bring the device up by
        // the slow path (a fresh device, the saved ring bases), rather than lose the guest.
        if (opts.inject || !s.devicePath.startsWith(`${vmm.daemon?.dir}/`) || !await restartDaemonIfGone(vmm, 2000)) throw e;
        r = VhostVdpa.restore({ ...s, path: 'fallback' }, vmm.machine.vm, mem);
        r.note = `the device daemon died during the update (${(e as Error).message}); restarted, device re-acquired by the slow path`;
      }
      vmm.vdpa.push(r.dev);
      vmm.machine.mmioDevices.push(r.dev.transport);
      devices.push({ index: s.index, path: r.path, note: r.note, timings: Object.fromEntries(Object.entries(r.timings).map(([k, v]) => [k, round(v as number)])) });
    }
    t.devices = now();
    if (opts.inject === 'new-process-crash') {
      process.stderr.write('minivmm: injected crash of the new process before it acknowledges\n');
      process.kill(process.pid, 'SIGKILL');
    }
    if (opts.inject === 'new-process-hang') {
      process.stderr.write('minivmm: injected hang of the new process before it acknowledges\n');
      process.kill(process.pid, 'SIGSTOP');
    }
    opts.beforeResume?.();
    vmm.machine.start();
    t.resumed = now();
    for (const d of vmm.vdpa) d.notifyAll(); // notifications lost in the pause: the guest's, before housekeeping
    opts.afterResume?.();

    const u = state.update;
    const result = updateResult(u, arrival, t, devices);
    vmm.updates = u.n;
    vmm.history = [...u.history, { n: u.n, downtime: result.downtime, path: result.path, phases: result.phases }].slice(-HISTORY_KEPT);
    vmm.params.mode = arrival.mode;
    setLogLevel(ms0.config.logLevel);
    await vmm.launch(opts.signals);
    vmm.event('RESUME');
    vmm.migration.completed(result);
    (await log()).info({ update: result.n, path: result.path, downtime_ms: result.downtime, phases: result.phases, accel: accel.kind }, `live update ${result.n}: blackout ${result.downtime.toFixed(1)} ms`);
    return vmm;
  }

  /** What a fresh VM and a restored one share: the monitor, signal handling, daemon supervision. */
  private async launch(signals?: EarlySignals): Promise<void> {
    const path = this.machine.config.qmp;
    if (path) {
      const inherited = cprFindFd('qmp', 0);
      const qmp = inherited === undefined ? await QmpServer.listen(path, VERSION) : await QmpServer.adopt(inherited, VERSION);
      cprSaveFd('qmp', 0, qmp.fd);
      await this.startMonitor(qmp);
    }
    this.handleSignals(signals);
    watchDaemon(this);
  }

  // ---- the live update, old image ----

  /**
   * Pauses the guest, quiesces every device (SUSPEND, ring bases: docs/vhost-vdpa-live-update.md
   * §4.2) and saves the VM. Null if a
   * device could not be quiesced: the update is then already rolled back and reported failed.
   */
  async beginUpdate(mode: UpdateMode): Promise<PreparedUpdate | null> {
    const tm = { pauseStart: now(), paused: 0n, requested: this.migration.requested };
    const wasRunning = this.machine.running;
    this.migration.active();
    await this.machine.pause();
    tm.paused = now();
    this.event('STOP');
    for (const d of this.vdpa) d.forceFallback = this.params.vdpaPath === 'fallback';
    const devices: PreparedUpdate['devices'] = [];
    try {
      for (const d of this.vdpa) devices.push([d, d.prepareUpdate(mode === 'cpr-exec')]);
      const state: VmmState = {
        machine: this.machine.save(), vdpa: devices.map(([, s]) => s), daemon: this.daemon,
        update: { n: this.updates + 1, mode, t: tm, history: this.history },
      };
      return { wasRunning, devices, state, fds: cprFds() };
    } catch (e) {
      await this.abortUpdate({ wasRunning, devices, state: undefined as never, fds: [] }, (e as Error).message);
      return null;
    }
  }

  /**
   * The update did not happen: restart the devices (taking them back if a new process may have
   * taken them over: `rolledBack`), resume the guest, report the failure. Written once, for
   * every way an update can fail after the pause.
   */
  async abortUpdate(u: PreparedUpdate, reason: string, rolledBack = false): Promise<void> {
    for (const d of this.vdpa) d.forceFallback = false;
    const errors: string[] = [];
    for (const [d, saved] of u.devices) {
      try { d.abortUpdate(saved, this.machine.mem, rolledBack); } catch (e) { errors.push(`vdpa device ${d.index} did not restart: ${(e as Error).message}`); }
    }
    if (u.wasRunning) { this.machine.resume(); this.event('RESUME'); }
    await this.failUpdate(`${reason}${rolledBack ? '; rolled back to the old process' : ''}${errors.length ? ` (${errors.join('; ')})` : ''}`, rolledBack);
  }

  /** The update failed (before the pause, or after abortUpdate put everything back). */
  async failUpdate(reason: string, rolledBack?: boolean): Promise<void> {
    this.migration.failed(reason, rolledBack);
    (await log()).error({ err: reason, rolled_back: rolledBack ?? false }, `live update failed, guest resumed: ${reason}`);
    this.settle();
  }

  // ---- process lifetime ----

  /** vCPU threads report guest exit (exit port) and fatal errors here. */
  onVcpuEvent = (e: VcpuEvent): void => {
    if (e.type === 'exit') void this.exit(e.code);
    else { process.stderr.write(`minivmm: ${e.message}\n`); void this.exit(1, 'host-error'); }
  };

  async exit(code: number, reason: ShutdownCause = 'guest-shutdown'): Promise<never> {
    if (!this.exiting) {
      this.exiting = true;
      this.event('SHUTDOWN', shutdownData(reason));
      if (this.machine?.config.qmp) { try { unlinkSync(this.machine.config.qmp); } catch { /* already gone */ } }
      if (this.machine) await Promise.race([this.machine.vcpus.stop(), new Promise((r) => setTimeout(r, 2000))]);
      for (const hook of this.exitHooks) {
        try { await hook(); } catch (e) { process.stderr.write(`minivmm: while shutting down: ${(e as Error).message}\n`); }
      }
    }
    process.exit(code);
  }

  event(name: string, data: Record<string, unknown> = {}): void { this.qmp?.event(name, data); }

  /**
   * SIGTERM/SIGINT end the VM cleanly (socket removed, daemon stopped). One that comes during a
   * live update waits until the update settles (see settle()): acting at once could leave the
   * devices half-moved or kill a process that is about to hand the guest over. `early` holds the
   * signals recorded before this process had a Vmm (a new image restoring the guest); its
   * listeners stay and forward to us (removing a listener would drop a signal libuv has queued).
   */
  private handleSignals(early: EarlySignals = recordSignals()): void {
    early.forward = (sig) => this.onSignal(sig);
    if (early.got.length) { this.pendingSignal = early.got[0]; this.settle(); }
  }

  /** A signal that came during the update in progress, acted on when it settles. */
  pendingSignal?: NodeJS.Signals;
  get updating(): boolean { return this.migration.inProgress; }

  private onSignal(sig: NodeJS.Signals): void {
    if (this.updating) {
      if (!this.pendingSignal) process.stderr.write(`minivmm: ${sig} during a live update: the VM shuts down once the update settles\n`);
      this.pendingSignal ??= sig;
      return;
    }
    process.stderr.write(`minivmm: ${sig}: shutting down the VM${this.updates ? ` after live update ${this.updates}` : ''}\n`);
    void this.exit(signalExitCode(sig), 'host-signal');
  }

  /** The update failed or rolled back here (or completed here): act on a signal that came during it. */
  settle(): void {
    if (this.pendingSignal && !this.updating) this.onSignal(this.pendingSignal);
  }

  // ---- monitor: what the QMP commands (vmm/monitor.ts) act on ----

  private async startMonitor(qmp: QmpServer): Promise<void> {
    this.qmp = qmp;
    installCommands(qmp, this);
  }

  get accelerator(): MonitorTarget['accelerator'] {
    return { kind: this.accel.kind, kvmPresent: this.accel.kind === 'kvm' || KvmAccelerator.unavailable() === null };
  }
  get running(): boolean { return this.machine.running; }
  stop(): Promise<void> { return this.machine.pause(); }
  cont(): void { this.machine.resume(); }
  quit(reason: ShutdownCause): void { void this.exit(0, reason); }

  /** `migrate` accepted (its checks done): status setup now, the update itself after the reply (an exec closes the connection). */
  migrate(mode: UpdateMode, uri: string): void {
    this.migration.setup();
    setImmediate(() => { void this.migrators[mode](this, uri); });
  }

  stats(): Record<string, unknown> {
    const at = this.machine.vcpus.firstRunAt;
    return { 'first-run-ms': at ?? null, 'first-run-epoch-ms': at === undefined ? null : performance.timeOrigin + at, updates: this.updates };
  }

  vdpaInfo(): unknown {
    return {
      daemon: this.daemon ?? null,
      devices: this.vdpa.map((d) => ({
        index: d.index, path: d.devicePath, 'device-id': d.deviceId, 'update-path': d.updatePath,
        'backend-features-offered': `0x${d.offered.toString(16)}`, 'backend-features': `0x${d.negotiated.toString(16)}`,
        status: d.transport.status, gsi: d.gsi, base: `0x${d.base.toString(16)}`,
      })),
    };
  }
}

/** The update's report: its blackout and where the time went, from the old image's and this one's clocks. */
function updateResult(u: UpdateRecord, a: Arrival, t: { decoded: bigint; vm: bigint; devices: bigint; resumed: bigint }, devices: UpdateResult['devices']): UpdateResult {
  const sum = (k: string) => round(devices.reduce((acc, d) => acc + (d.timings[k] ?? 0), 0));
  return {
    n: u.n,
    mode: a.mode,
    path: devices.length === 0 ? 'none' : devices.some((d) => d.path === 'fallback') ? 'fallback' : 'new-owner',
    devices,
    downtime: round(ms(u.t.pauseStart, t.resumed)),
    ...(a.oldAddressSpace ? { oldAddressSpace: a.oldAddressSpace } : {}),
    setup: round(ms(u.t.requested ?? u.t.pauseStart, u.t.pauseStart)),
    phases: {
      pause: round(ms(u.t.pauseStart, u.t.paused)),
      save: round(ms(u.t.paused, a.saved)),
      [a.mode === 'cpr-exec' ? 'exec' : 'transfer']: round(ms(a.sent, a.arrived)),
      restore: round(ms(a.arrived, t.devices)),
      resume: round(ms(t.devices, t.resumed)),
      load: round(ms(a.arrived, a.loaded)),
      decode: round(ms(a.loaded, a.decoded ?? t.decoded)),
      accel: round(ms(a.decoded ?? t.decoded, t.decoded)), // opening the accelerator (the emulator loads libunicorn)
      vm: round(ms(t.decoded, t.vm)),
      devices: round(ms(t.vm, t.devices)),
      new_owner: sum('newOwner'),
      remap: sum('remap'),
      repin: sum('map'),
    },
  };
}
