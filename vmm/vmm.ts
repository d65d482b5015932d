// The VMM process: one machine, its monitor, and the migration (live update) state machine.
import { unlinkSync } from 'node:fs';
import { Machine } from './machine.js';
import type { QmpServer } from './qmp.js';
import { installCommands, shutdownData, type MonitorTarget, type MigrationParameters, type ShutdownCause } from './monitor.js';
import { log } from './log.js';
import type { VcpuEvent } from './vcpus.js';
import type { UpdateRecord } from '../cpr/state.js';
import type { VhostVdpa } from '../devices/vhost-vdpa.js';
import type { DaemonRef } from './vdpa.js';

/** Signals recorded before a Vmm exists; once one does, `forward` takes the later ones. */
export interface EarlySignals { got: NodeJS.Signals[]; forward?: (sig: NodeJS.Signals) => void }

/** Records SIGTERM/SIGINT from now on, for the Vmm to take over (a process restoring a guest must not die half-way). */
export function recordSignals(early: EarlySignals = { got: [] }): EarlySignals {
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => (early.forward ? early.forward(sig) : early.got.push(sig)));
  return early;
}

const signalExitCode = (sig: NodeJS.Signals): number => 128 + (sig === 'SIGTERM' ? 15 : 2);

export const VERSION = { major: 0, minor: 1, micro: 0, package: 'minivmm 0.1.0' };

export interface UpdateResult {
  n: number;
  mode?: 'cpr-exec' | 'cpr-transfer';
  downtime: number;
  /** From `migrate` to the pause, ms. */
  setup?: number;
  /** "new-owner" or "fallback" (the slowest any device took), "none" without devices. */
  path: string;
  phases: Record<string, number>;
  devices?: { index: number; path: string; note?: string; timings: Record<string, number> }[];
}

export interface MigrationInfo {
  status: 'none' | 'setup' | 'active' | 'completed' | 'failed';
  error?: string;
  /** cpr-transfer: the new process failed and this one took the guest and its devices back. */
  rolledBack?: boolean;
  /** When `migrate` was accepted (process.hrtime, ns). */
  requested?: bigint;
  last?: UpdateResult;
}

/** How each migration mode is carried out (cpr/exec.ts, cpr/transfer.ts); `uri` as given to migrate. */
export type Migrators = Record<'cpr-exec' | 'cpr-transfer', (vmm: Vmm, uri: string) => Promise<void>>;

export class Vmm implements MonitorTarget {
  machine!: Machine;
  vdpa: VhostVdpa[] = [];
  /** The embedded device daemon this VM started (it outlives our exec; stopped when the VM ends). */
  daemon?: DaemonRef;
  qmp?: QmpServer;
  params: MigrationParameters = { mode: 'normal', cprExecCommand: null, vdpaPath: 'auto', transferTimeoutMs: 5000 };
  migration: MigrationInfo = { status: 'none' };
  /** How many live updates this VM went through, and the last few of them (both carried in the state). */
  updates = 0;
  history: UpdateRecord['history'] = [];
  private exiting = false;
  /** The VM is being shut down (exit hooks running). */
  get stopping(): boolean { return this.exiting; }

  constructor(private migrators: Migrators) {}

  /** vCPU threads report guest exit (exit port) and fatal errors here. */
  onVcpuEvent = (e: VcpuEvent): void => {
    if (e.type === 'exit') void this.exit(e.code);
    else { process.stderr.write(`minivmm: ${e.message}\n`); void this.exit(1, 'host-error'); }
  };

  async exit(code: number, reason: ShutdownCause = 'guest-shutdown'): Promise<never> {
    if (!this.exiting) {
      this.exiting = true;
      if (this.qmp) this.qmp.event('SHUTDOWN', shutdownData(reason));
      if (this.machine?.config.qmp) { try { unlinkSync(this.machine.config.qmp); } catch { /* already gone */ } }
      if (this.machine) await Promise.race([this.machine.vcpus.stop(), new Promise((r) => setTimeout(r, 2000))]);
      for (const hook of this.exitHooks) { try { await hook(); } catch { /* best effort */ } }
    }
    process.exit(code);
  }
  exitHooks: (() => Promise<void> | void)[] = [];

  /**
   * SIGTERM/SIGINT end the VM cleanly (socket removed, daemon stopped). One that comes during a
   * live update waits until the update settles (see settle()): acting at once could leave the
   * devices half-moved or kill a process that is about to hand the guest over. `early` holds the
   * signals recorded before this process had a Vmm (a new image restoring the guest); its
   * listeners stay and forward to us (removing a listener would drop a signal libuv has queued).
   */
  handleSignals(early: EarlySignals = recordSignals()): void {
    early.forward = (sig) => this.onSignal(sig);
    if (early.got.length) { this.pendingSignal = early.got[0]; this.settle(); }
  }

  /** A signal that came during the update in progress, acted on when it settles. */
  pendingSignal?: NodeJS.Signals;
  get updating(): boolean { return this.migration.status === 'setup' || this.migration.status === 'active'; }

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

  async startMonitor(qmp: QmpServer): Promise<void> {
    this.qmp = qmp;
    installCommands(qmp, this);
  }

  // MonitorTarget: what the QMP commands (vmm/monitor.ts) act on.
  capabilities = { events: false };
  /** Until the accelerator seam lands (src/accel), the VMM runs on KVM only, so KVM is present. */
  readonly accelerator = { kind: 'kvm' as const, kvmPresent: true };
  get running(): boolean { return this.machine.running; }
  stop(): Promise<void> { return this.machine.pause(); }
  cont(): void { this.machine.resume(); }
  quit(reason: ShutdownCause): void { void this.exit(0, reason); }
  migrate(mode: 'cpr-exec' | 'cpr-transfer', uri: string): void {
    this.migration = { status: 'setup', last: this.migration.last, requested: process.hrtime.bigint() };
    // After the reply: the exec that follows closes this connection.
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

  async logUpdate(r: UpdateResult): Promise<void> {
    (await log()).info({ update: r.n, path: r.path, downtime_ms: r.downtime, phases: r.phases }, `live update ${r.n}: blackout ${r.downtime.toFixed(1)} ms`);
  }
}
