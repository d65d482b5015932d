// The VMM process: one machine, its monitor, and the migration (live update) state machine.
import { unlinkSync } from 'node:fs';
import { Machine } from './machine.js';
import { QmpServer, QmpError } from './qmp.js';
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
  last?: UpdateResult;
}

/** How each migration mode is carried out (cpr/exec.ts, cpr/transfer.ts); `uri` as given to migrate. */
export type Migrators = Record<'cpr-exec' | 'cpr-transfer', (vmm: Vmm, uri: string) => Promise<void>>;

export class Vmm {
  machine!: Machine;
  vdpa: VhostVdpa[] = [];
  /** The embedded device daemon this VM started (it outlives our exec; stopped when the VM ends). */
  daemon?: DaemonRef;
  qmp?: QmpServer;
  params: { mode: string; cprExecCommand: string[] | null; vdpaPath: 'auto' | 'fallback'; transferTimeoutMs: number } =
    { mode: 'normal', cprExecCommand: null, vdpaPath: 'auto', transferTimeoutMs: 5000 };
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
    else { process.stderr.write(`minivmm: ${e.message}\n`); void this.exit(1); }
  };

  async exit(code: number): Promise<never> {
    if (!this.exiting) {
      this.exiting = true;
      if (this.qmp) this.qmp.event('SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
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
    void this.exit(signalExitCode(sig));
  }

  /** The update failed or rolled back here (or completed here): act on a signal that came during it. */
  settle(): void {
    if (this.pendingSignal && !this.updating) this.onSignal(this.pendingSignal);
  }

  async startMonitor(qmp: QmpServer): Promise<void> {
    this.qmp = qmp;
    const q = qmp;
    q.register('query-status', () => ({ status: this.machine.running ? 'running' : 'paused', running: this.machine.running, singlestep: false }));
    q.register('query-version', () => ({ qemu: { major: VERSION.major, minor: VERSION.minor, micro: VERSION.micro }, package: VERSION.package }));
    q.register('stop', async () => {
      if (this.machine.running) { await this.machine.pause(); q.event('STOP'); }
      return {};
    });
    q.register('cont', () => {
      if (this.migration.status === 'active' || this.migration.status === 'setup') throw new QmpError('a migration is in progress');
      if (!this.machine.running) { this.machine.resume(); q.event('RESUME'); }
      return {};
    });
    q.register('quit', (_args, client) => {
      client.send({ return: {} }, () => void this.exit(0));
      return new Promise(() => {}); // replied above; never resolves
    });
    q.register('migrate-set-parameters', (args) => {
      const { mode, 'cpr-exec-command': cmd, 'x-vdpa-path': vdpaPath, 'x-transfer-timeout-ms': timeout } = args as { mode?: unknown; 'cpr-exec-command'?: unknown; 'x-vdpa-path'?: unknown; 'x-transfer-timeout-ms'?: unknown };
      if (timeout !== undefined) {
        if (typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout < 1 || timeout > 600_000) throw new QmpError("Parameter 'x-transfer-timeout-ms' expects an integer from 1 to 600000");
        this.params.transferTimeoutMs = timeout;
      }
      if (vdpaPath !== undefined) {
        if (vdpaPath !== 'auto' && vdpaPath !== 'fallback') throw new QmpError("Parameter 'x-vdpa-path' expects 'auto' or 'fallback'");
        this.params.vdpaPath = vdpaPath;
      }
      if (mode !== undefined) {
        if (mode !== 'normal' && mode !== 'cpr-exec' && mode !== 'cpr-transfer') throw new QmpError(`Parameter 'mode' does not accept value '${String(mode)}' (supported: normal, cpr-exec, cpr-transfer)`);
        this.params.mode = mode;
      }
      if (cmd !== undefined) {
        if (!Array.isArray(cmd) || !cmd.every((a) => typeof a === 'string' && a.length > 0)) {
          throw new QmpError("Parameter 'cpr-exec-command' expects an array of non-empty strings");
        }
        // [] means the default: this build, same options.
        this.params.cprExecCommand = cmd.length ? (cmd as string[]) : null;
      }
      return {};
    });
    q.register('query-migrate-parameters', () => ({ mode: this.params.mode, 'cpr-exec-command': this.params.cprExecCommand ?? [], 'x-vdpa-path': this.params.vdpaPath, 'x-transfer-timeout-ms': this.params.transferTimeoutMs }));
    q.register('query-migrate', () => this.queryMigrate());
    q.register('x-query-stats', () => {
      const at = this.machine.vcpus.firstRunAt;
      return { 'first-run-ms': at ?? null, 'first-run-epoch-ms': at === undefined ? null : performance.timeOrigin + at, updates: this.updates };
    });
    q.register('x-query-vdpa', () => ({
      daemon: this.daemon ?? null,
      devices: this.vdpa.map((d) => ({
        index: d.index, path: d.devicePath, 'device-id': d.deviceId, 'update-path': d.updatePath,
        'backend-features-offered': `0x${d.offered.toString(16)}`, 'backend-features': `0x${d.negotiated.toString(16)}`,
        status: d.transport.status, gsi: d.gsi, base: `0x${d.base.toString(16)}`,
      })),
    }));
    q.register('migrate', async (args) => {
      const uri = (args as { uri?: unknown }).uri;
      const mode = this.params.mode;
      if (mode !== 'cpr-exec' && mode !== 'cpr-transfer') throw new QmpError(`migration mode '${mode}' is not supported: set mode 'cpr-exec' or 'cpr-transfer' with migrate-set-parameters`);
      if (mode === 'cpr-exec' && (typeof uri !== 'string' || !uri.startsWith('file:') || uri.length <= 5)) throw new QmpError("Parameter 'uri' must be 'file:PATH' (the CPR state itself travels in a memfd)");
      if (mode === 'cpr-transfer' && (typeof uri !== 'string' || !uri.startsWith('unix:') || uri.length <= 5)) throw new QmpError("Parameter 'uri' must be 'unix:PATH', the socket of the new process (started with --incoming cpr-transfer:PATH)");
      if (this.migration.status === 'setup' || this.migration.status === 'active') throw new QmpError('There is already a migration in progress');
      this.migration = { status: 'setup', last: this.migration.last };
      q.event('MIGRATION', { status: 'setup' });
      // Reply first: the exec that follows closes this connection.
      setImmediate(() => { void this.migrators[mode](this, uri as string); });
      return {};
    });
  }

  queryMigrate(): Record<string, unknown> {
    const m = this.migration;
    if (m.status === 'none') return {};
    const out: Record<string, unknown> = { status: m.status };
    if (m.error) out['error-desc'] = m.error;
    if (m.rolledBack !== undefined) out.rolled_back = m.rolledBack;
    if (m.last && m.status === 'completed') {
      out.downtime = m.last.downtime;
      out['total-time'] = m.last.downtime;
      out.cpr = { n: m.last.n, mode: m.last.mode ?? 'cpr-exec', path: m.last.path, phases: m.last.phases, devices: m.last.devices ?? [] };
      out.rolled_back = false;
    }
    return out;
  }

  async logUpdate(r: UpdateResult): Promise<void> {
    (await log()).info({ update: r.n, path: r.path, downtime_ms: r.downtime, phases: r.phases }, `live update ${r.n}: blackout ${r.downtime.toFixed(1)} ms`);
  }
}
