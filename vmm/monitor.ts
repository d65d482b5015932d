// The QMP command table: what each command takes (checked before it runs, with QEMU's wording) and
// what it does to the machine behind the monitor, a MonitorTarget: the Vmm, or a stand-in in the
// protocol tests, which need neither KVM nor a guest.
import { QmpError, type Members, type ArgType, type QmpCommand, type QmpServer } from './qmp.js';
import type { Migration } from './migration.js';

/** QEMU's ShutdownCause (qapi/run-state.json), in its order. */
export const SHUTDOWN_CAUSES = ['none', 'host-error', 'host-qmp-quit', 'host-qmp-system-reset', 'host-signal', 'host-ui',
  'guest-shutdown', 'guest-reset', 'guest-panic', 'subsystem-reset', 'snapshot-load'] as const;
export type ShutdownCause = typeof SHUTDOWN_CAUSES[number];

/** SHUTDOWN's data; `guest` for the causes after host-ui, as QEMU's shutdown_caused_by_guest(). */
export function shutdownData(reason: ShutdownCause): { guest: boolean; reason: ShutdownCause } {
  return { guest: SHUTDOWN_CAUSES.indexOf(reason) > SHUTDOWN_CAUSES.indexOf('host-ui'), reason };
}

export const MIGRATION_MODES = ['normal', 'cpr-exec', 'cpr-transfer'] as const;
export type MigrationMode = typeof MIGRATION_MODES[number];

export interface MigrationParameters {
  mode: MigrationMode;
  /** null: this build, same options (QEMU's default of "same binary"). */
  cprExecCommand: string[] | null;
  vdpaPath: 'auto' | 'fallback';
  transferTimeoutMs: number;
}

/** The migration capabilities minivmm implements (QEMU has more; the others are refused). */
export interface MigrationCapabilities { events: boolean }

/** What the monitor drives. */
export interface MonitorTarget {
  readonly running: boolean;
  /** Pause the vCPUs (the monitor sends STOP). */
  stop(): Promise<void>;
  /** Run them again (the monitor sends RESUME). */
  cont(): void;
  /** End the VM; called once the reply has been written. SHUTDOWN carries `reason`. */
  quit(reason: ShutdownCause): void;
  params: MigrationParameters;
  capabilities: MigrationCapabilities;
  readonly migration: Migration;
  /** Start a live update (checks done): status setup now, the work after the reply. */
  migrate(mode: 'cpr-exec' | 'cpr-transfer', uri: string): void;
  /** x-query-vdpa's answer. */
  vdpaInfo(): unknown;
  /** x-query-stats' answer, but for the accelerator. */
  stats(): Record<string, unknown>;
  readonly accelerator: { kind: 'kvm' | 'emu'; kvmPresent: boolean };
}

// qapi/sockets.json and qapi/migration.json, the parts `migrate` takes.
const INET: Members = { host: 'str', port: 'str', '*numeric': 'bool', '*to': 'int', '*ipv4': 'bool', '*ipv6': 'bool', '*keep-alive': 'bool', '*mptcp': 'bool' };
const SOCKET_ADDRESS: ArgType = {
  union: 'type', base: { type: { enum: ['inet', 'unix', 'vsock', 'fd'] } },
  variants: { inet: INET, unix: { path: 'str', '*abstract': 'bool', '*tight': 'bool' }, vsock: { cid: 'str', port: 'str' }, fd: { str: 'str' } },
};
const MIGRATION_ADDRESS: ArgType = {
  union: 'transport', base: { transport: { enum: ['socket', 'exec', 'rdma', 'file'] } },
  variants: { socket: SOCKET_ADDRESS, exec: { args: { list: 'str' } }, rdma: INET, file: { filename: 'str', offset: 'int' } },
};
const MIGRATION_CHANNEL: ArgType = { struct: { 'channel-type': { enum: ['main', 'cpr'] }, addr: MIGRATION_ADDRESS } };

type Address = { transport: string; type?: string; path?: string; filename?: string };

/** The update's target from `migrate`'s arguments: "file:PATH" (cpr-exec) or "unix:PATH" (cpr-transfer). */
function migrationTarget(mode: MigrationMode, args: { uri?: string; channels?: { 'channel-type': string; addr: Address }[] }): string {
  if ((args.uri === undefined) === (args.channels === undefined)) throw new QmpError("need either 'uri' or 'channels' argument");
  if (mode !== 'cpr-exec' && mode !== 'cpr-transfer') throw new QmpError(`migration mode '${mode}' is not supported: set mode 'cpr-exec' or 'cpr-transfer' with migrate-set-parameters`);
  let uri = args.uri;
  if (args.channels) {
    const byType: Record<string, Address> = {};
    for (const c of args.channels) {
      if (byType[c['channel-type']]) throw new QmpError(`Channel list has more than one ${c['channel-type']} entry`);
      byType[c['channel-type']] = c.addr;
    }
    if (!byType.main) throw new QmpError('Channel list has no main entry');
    if (mode === 'cpr-transfer') {
      // Everything travels on the cpr channel (state and fds, SCM_RIGHTS); the main one is not used.
      const cpr = byType.cpr;
      if (!cpr) throw new QmpError("missing 'cpr' migration channel");
      if (cpr.transport !== 'socket' || cpr.type !== 'unix') throw new QmpError('bad cpr channel address; must be unix');
      uri = `unix:${cpr.path}`;
    } else {
      const main = byType.main;
      if (main.transport !== 'file') throw new QmpError("cpr-exec takes a main channel of transport 'file' (the CPR state itself travels in a memfd)");
      uri = `file:${main.filename}`;
    }
  }
  if (mode === 'cpr-exec' && (!uri!.startsWith('file:') || uri!.length <= 5)) throw new QmpError("Parameter 'uri' must be 'file:PATH' (the CPR state itself travels in a memfd)");
  if (mode === 'cpr-transfer' && (!uri!.startsWith('unix:') || uri!.length <= 5)) throw new QmpError("Parameter 'uri' must be 'unix:PATH', the socket of the new process (started with --incoming cpr-transfer:PATH)");
  return uri!;
}

const ms = (ns: bigint) => Number(ns) / 1e6;

/** query-migrate: QEMU's MigrationInfo (int milliseconds), minivmm's figures in x- members. */
export function migrationInfo(m: Migration, now = process.hrtime.bigint()): Record<string, unknown> {
  if (m.status === 'none') return {};
  const out: Record<string, unknown> = { status: m.status };
  if ((m.status === 'setup' || m.status === 'active') && m.requested !== undefined) out['total-time'] = Math.round(ms(now - m.requested));
  if (m.error) out['error-desc'] = m.error;
  if (m.rolledBack !== undefined) out['x-rolled-back'] = m.rolledBack;
  if (m.last && m.status === 'completed') {
    const l = m.last;
    out['total-time'] = Math.round(l.setup + l.downtime);
    out['setup-time'] = Math.round(l.setup);
    out.downtime = Math.round(l.downtime);
    out['x-rolled-back'] = false;
    out['x-cpr'] = { n: l.n, mode: l.mode, path: l.path, downtime: l.downtime, setup: l.setup, phases: l.phases, devices: l.devices, ...(l.oldAddressSpace ? { 'old-address-space': l.oldAddressSpace } : {}) };
  }
  return out;
}

/** Registers every command on `server`, acting on `target`. */
export function installCommands(server: QmpServer, target: MonitorTarget): void {
  const migrating = () => target.migration.status === 'setup' || target.migration.status === 'active';
  server.eventFilter = (name) => name !== 'MIGRATION' || target.capabilities.events;
  const commands: Record<string, QmpCommand> = {
    'query-status': { run: () => ({ status: target.running ? 'running' : 'paused', singlestep: false, running: target.running }) },
    'query-version': { run: () => server.versionInfo },
    'query-kvm': { run: () => ({ enabled: target.accelerator.kind === 'kvm', present: target.accelerator.kvmPresent }) },
    stop: {
      run: async () => { if (target.running) { await target.stop(); server.event('STOP'); } },
    },
    cont: {
      run: () => {
        if (migrating()) throw new QmpError('a migration is in progress');
        if (!target.running) { target.cont(); server.event('RESUME'); }
      },
    },
    quit: { run: (_args, { afterReply }) => { afterReply(() => target.quit('host-qmp-quit')); } },
    'migrate-set-parameters': {
      args: { '*mode': { enum: MIGRATION_MODES }, '*cpr-exec-command': { list: 'str' }, '*x-vdpa-path': { enum: ['auto', 'fallback'] }, '*x-transfer-timeout-ms': 'int' },
      run: (args) => {
        const cmd = args['cpr-exec-command'] as string[] | undefined, timeout = args['x-transfer-timeout-ms'] as number | undefined;
        // Every check before any change.
        if (timeout !== undefined && (timeout < 1 || timeout > 600_000)) throw new QmpError("Parameter 'x-transfer-timeout-ms' expects an integer from 1 to 600000");
        if (cmd?.some((a) => a.length === 0)) throw new QmpError("Parameter 'cpr-exec-command' expects an array of non-empty strings");
        const p = target.params;
        if (args.mode !== undefined) p.mode = args.mode as MigrationMode;
        if (cmd !== undefined) p.cprExecCommand = cmd.length ? cmd : null; // [] means the default
        if (args['x-vdpa-path'] !== undefined) p.vdpaPath = args['x-vdpa-path'] as 'auto' | 'fallback';
        if (timeout !== undefined) p.transferTimeoutMs = timeout;
      },
    },
    'query-migrate-parameters': {
      run: () => ({ mode: target.params.mode, 'cpr-exec-command': target.params.cprExecCommand ?? [], 'x-vdpa-path': target.params.vdpaPath, 'x-transfer-timeout-ms': target.params.transferTimeoutMs }),
    },
    'migrate-set-capabilities': {
      args: { capabilities: { list: { struct: { capability: { enum: ['events'] }, state: 'bool' } } } },
      run: (args) => {
        if (migrating()) throw new QmpError("There's a migration process in progress");
        for (const c of args.capabilities as { capability: 'events'; state: boolean }[]) target.capabilities[c.capability] = c.state;
      },
    },
    'query-migrate-capabilities': { run: () => [{ capability: 'events', state: target.capabilities.events }] },
    'query-migrate': { run: () => migrationInfo(target.migration) },
    migrate: {
      args: { '*uri': 'str', '*channels': { list: MIGRATION_CHANNEL }, '*detach': 'bool', '*resume': 'bool' },
      run: (args) => {
        if (args.resume === true) throw new QmpError('Cannot resume if there is no paused migration');
        const mode = target.params.mode;
        const uri = migrationTarget(mode, args as Parameters<typeof migrationTarget>[1]);
        if (migrating()) throw new QmpError('There is already a migration in progress');
        target.migrate(mode as 'cpr-exec' | 'cpr-transfer', uri); // the Migration sends its own MIGRATION events
      },
    },
    'x-query-stats': { run: () => ({ ...target.stats(), accelerator: target.accelerator.kind }) },
    'x-query-vdpa': { run: () => target.vdpaInfo() },
  };
  for (const [name, c] of Object.entries(commands)) server.register(name, c);
}
