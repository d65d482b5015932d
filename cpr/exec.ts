// cpr-exec, old image: pause, save the state into a sealed memfd, clear FD_CLOEXEC on exactly the
// fds to keep, execve. If execve fails: CLOEXEC back, resume, report failed (QEMU's cpr-exec).
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { close, execve, setCloexec, isCloexec } from '../src/libc.js';
import { warmUpCodec, writeSealedState, type NamedFd, type UpdateRecord } from './state.js';
import type { Vmm, Migrators } from '../vmm/vmm.js';
import type { VhostVdpa, VdpaState } from '../devices/vhost-vdpa.js';
import { log } from '../vmm/log.js';

export const STATE_ENV = 'MINIVMM_CPR_STATE';
/** "<saved>,<execStart>" in ns: the two times the sealed state cannot hold. */
export const TIMES_ENV = 'MINIVMM_CPR_TIMES';

const now = (): bigint => process.hrtime.bigint();

/** The fds the new image needs, by name. */
export function keptFds(vmm: Vmm): NamedFd[] {
  const fds: NamedFd[] = vmm.machine.mem.regions.map((r, i) => ({ name: 'ram', id: i, fd: r.fd }));
  for (const d of vmm.vdpa) {
    if (d.keptFd !== null) fds.push({ name: 'vdpa', id: d.index, fd: d.keptFd });
    const ev = d.keptEventfds;
    if (ev) {
      ev.kick.forEach((fd, q) => fds.push({ name: `vdpa-kick-${d.index}`, id: q, fd }));
      ev.call.forEach((fd, q) => fds.push({ name: `vdpa-call-${d.index}`, id: q, fd }));
    }
  }
  if (vmm.machine.serialFd > 2) fds.push({ name: 'serial', id: 0, fd: vmm.machine.serialFd });
  if (vmm.qmp) fds.push({ name: 'qmp', id: 0, fd: vmm.qmp.fd });
  return fds;
}

/**
 * Node reads NODE_EXTRA_CA_CERTS at start-up: with a system bundle that is ~70 ms of CPU inside
 * the blackout (measured: `node -e 0` 110 ms with it, 35 ms without). The new image needs no TLS;
 * it gets the variable back after the guest resumes (restoreEnv), for whatever it spawns.
 */
const DEFERRED_ENV = ['NODE_EXTRA_CA_CERTS'];
const DEFERRED_PREFIX = 'MINIVMM_DEFERRED_';
export function leanEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env };
  for (const k of DEFERRED_ENV) if (out[k] !== undefined) { out[DEFERRED_PREFIX + k] = out[k]; delete out[k]; }
  return out;
}
export function restoreEnv(): void {
  for (const k of DEFERRED_ENV) {
    const v = process.env[DEFERRED_PREFIX + k];
    if (v !== undefined) { process.env[k] = v; delete process.env[DEFERRED_PREFIX + k]; }
  }
}

/** execvp's lookup: a name without '/' is searched in PATH. */
function resolveCommand(cmd: string): string {
  if (cmd.includes('/')) return cmd;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const p = join(dir || '.', cmd);
    try { accessSync(p, constants.X_OK); return p; } catch { /* next */ }
  }
  return cmd;
}

/** The command that runs this same build with the same options (QEMU's default of "same binary"). */
export function defaultCommand(): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1], ...process.argv.slice(2)];
}

/**
 * Old image, vCPUs paused: quiesce each device (SUSPEND, ring bases; spec §4.2) and save
 * everything into a sealed memfd. Devices quiesced so far are in `prepared`, also if this throws.
 */
export function saveForUpdate(vmm: Vmm, mode: UpdateRecord['mode'], t: UpdateRecord['t'], kept: NamedFd[], prepared: [VhostVdpa, VdpaState][]): number {
  for (const d of vmm.vdpa) prepared.push([d, d.prepareUpdate()]);
  return writeSealedState({
    machine: vmm.machine.save({ vdpa: prepared.map(([, s]) => s), vdpaDaemon: vmm.daemon }),
    fds: kept,
    update: { n: vmm.updates + 1, mode, t, history: vmm.history },
  });
}

export async function cprExec(vmm: Vmm, command: string[] | null): Promise<void> {
  const argv = command ?? defaultCommand();
  await warmUpCodec();
  const qmp = vmm.qmp;
  const t = { pauseStart: now(), paused: 0n, requested: vmm.migration.requested };
  const wasRunning = vmm.machine.running;
  vmm.migration.status = 'active';
  qmp?.event('MIGRATION', { status: 'active' });

  await vmm.machine.pause();
  t.paused = now();
  qmp?.event('STOP');

  let stateFd = -1;
  for (const d of vmm.vdpa) d.forceFallback = vmm.params.vdpaPath === 'fallback';
  const kept = keptFds(vmm);
  const restoreCloexec: number[] = [];
  const prepared: [VhostVdpa, VdpaState][] = [];
  try {
    stateFd = saveForUpdate(vmm, 'cpr-exec', t, kept, prepared);
    const saved = now();
    // Let a SIGTERM/SIGINT that came while the devices quiesced reach its handler (libuv queues
    // it for the event loop, which execve would discard; two turns make sure one poll phase runs),
    // and cancel the update for it: the VM is to end, and this image can end it cleanly.
    for (let turn = 0; turn < 2; turn++) await new Promise((r) => setImmediate(r));
    if (vmm.pendingSignal) throw new Error(`cancelled by ${vmm.pendingSignal}`);
    for (const fd of [0, 1, 2, stateFd, ...kept.map((k) => k.fd)]) {
      if (isCloexec(fd)) { setCloexec(fd, false); restoreCloexec.push(fd); }
    }
    const env = { ...leanEnv(process.env), [STATE_ENV]: String(stateFd), [TIMES_ENV]: `${saved},${now()}` };
    execve(resolveCommand(argv[0]), argv, env);
  } catch (e) {
    // Still the old image: every kept fd gets CLOEXEC again, the guest runs on.
    for (const fd of restoreCloexec) { try { setCloexec(fd, true); } catch { /* closed */ } }
    if (stateFd >= 0) { try { close(stateFd); } catch { /* ignore */ } }
    for (const d of vmm.vdpa) d.forceFallback = false;
    for (const [d, saved] of prepared) {
      try { d.resumeAfterFailedUpdate(saved); } catch (err) { (await log()).error({ err: (err as Error).message }, `vdpa device ${d.index} did not restart`); }
    }
    if (wasRunning) { vmm.machine.resume(); qmp?.event('RESUME'); }
    const reason = (e as Error).message;
    vmm.migration = { status: 'failed', error: reason, last: vmm.migration.last };
    qmp?.event('MIGRATION', { status: 'failed' });
    (await log()).error({ err: reason }, `live update failed, guest resumed: ${reason}`);
    vmm.settle();
  }
}

export const MIGRATORS: Migrators = {
  'cpr-exec': (vmm) => cprExec(vmm, vmm.params.cprExecCommand),
  'cpr-transfer': async (vmm, uri) => (await import('./transfer.js')).cprTransfer(vmm, uri, vmm.params.transferTimeoutMs),
};
