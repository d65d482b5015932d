// cpr-exec (QEMU's migration/cpr-exec.c): the old image pauses the guest, seals the state in a
// memfd, keeps exactly the registered fds open across execve and execs the new build; the new
// image reads the state and rebuilds the VM over the same fds. If execve fails, the old image
// puts everything back and the guest runs on.
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { execve, setCloexec, isCloexec, close } from '../src/libc.js';
import { cprAdoptFds, cprCloseOnExec } from '../src/cpr-fds.js';
import { openAccelerator, isAccelChoice, type AccelChoice } from '../src/accel/select.js';
import { loadKeeper, startKeeper, releaseKeeper } from '../src/keeper.js';
import { Vmm, type Migrators, type EarlySignals } from '../vmm/vmm.js';
import { warmUpCodec, sealState, readSealedState, decodeState, type CprState } from './envelope.js';

const now = (): bigint => process.hrtime.bigint();

/**
 * What travels beside the sealed state, in the environment: the state's fd, the two times it
 * cannot hold, and the pid of the keeper holding the old address space (0: none).
 */
interface ExecHandoff { stateFd: number; saved: bigint; sent: bigint; keeper: number }
const HANDOFF_ENV = 'MINIVMM_CPR_STATE'; // "<fd>,<saved ns>,<sent ns>,<keeper pid>"
/** Fault injection for tests and the demo, read once by the new image. */
export const INJECT_ENV = 'MINIVMM_INJECT';

/** True in a process started by cpr-exec (bin/minivmm.js takes the restore path). */
export const isExecHandoff = (env: NodeJS.ProcessEnv): boolean => env[HANDOFF_ENV] !== undefined;

function handoffEnv(h: ExecHandoff): Record<string, string> {
  return { [HANDOFF_ENV]: `${h.stateFd},${h.saved},${h.sent},${h.keeper}` };
}

/** Takes the hand-off out of the environment (nothing this image spawns should see it). */
function takeHandoff(env: NodeJS.ProcessEnv): ExecHandoff {
  const text = env[HANDOFF_ENV] ?? '';
  delete env[HANDOFF_ENV];
  const m = /^(\d+),(\d+),(\d+),(\d+)$/.exec(text);
  if (!m) throw new Error(`${HANDOFF_ENV}=${JSON.stringify(text)} is not "<fd>,<saved>,<sent>,<keeper>"`);
  return { stateFd: Number(m[1]), saved: BigInt(m[2]), sent: BigInt(m[3]), keeper: Number(m[4]) };
}

export function takeInject(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const v = env[INJECT_ENV];
  delete env[INJECT_ENV];
  return v;
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
function restoreEnv(): void {
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
    try { accessSync(p, constants.X_OK); return p; } catch { /* not here: next PATH entry */ }
  }
  return cmd;
}

/** The command that runs this same build with the same options (QEMU's default of "same binary"). */
export function defaultCommand(): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1], ...process.argv.slice(2)];
}

/** `--accel X` or `--accel=X` in the new image's own command line: cpr-exec can change accelerator. */
function accelArg(argv: string[]): AccelChoice | undefined {
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i] === '--accel' ? argv[i + 1] : argv[i].startsWith('--accel=') ? argv[i].slice(8) : undefined;
    if (v !== undefined) {
      if (!isAccelChoice(v)) throw new Error(`--accel ${v}: expected kvm, emu or auto`);
      return v;
    }
  }
  return undefined;
}

/** Old image: one live update by exec. */
export async function cprExec(vmm: Vmm, command: string[] | null): Promise<void> {
  const argv = command ?? defaultCommand();
  await warmUpCodec();
  loadKeeper(); // dlopen before the pause; startKeeper reports if it failed
  const u = await vmm.beginUpdate('cpr-exec');
  if (!u) return;
  const keptOpen: number[] = [];
  let stateFd = -1, keeper = 0;
  try {
    stateFd = sealState({ vmm: u.state, fds: u.fds });
    const saved = now();
    // Let a SIGTERM/SIGINT that came while the devices quiesced reach its handler (libuv queues
    // it for the event loop, which execve would discard; two turns make sure one poll phase runs),
    // and cancel the update for it: the VM is to end, and this image can end it cleanly.
    for (let turn = 0; turn < 2; turn++) await new Promise((r) => setImmediate(r));
    if (vmm.pendingSignal) throw new Error(`cancelled by ${vmm.pendingSignal}`);
    for (const fd of [0, 1, 2, stateFd, ...u.fds.map((k) => k.fd)]) {
      if (isCloexec(fd)) { setCloexec(fd, false); keptOpen.push(fd); }
    }
    // Without a keeper the exec still works; it tears the address space down inside the blackout.
    try { keeper = startKeeper(); } catch (e) { process.stderr.write(`minivmm: ${(e as Error).message}; the exec tears the old address space down inside the blackout\n`); }
    execve(resolveCommand(argv[0]), argv, { ...leanEnv(process.env), ...handoffEnv({ stateFd, saved, sent: now(), keeper }) });
  } catch (e) {
    // Still the old image: every kept fd gets CLOEXEC again, the keeper goes (it shares our
    // address space: its exit tears nothing down), the guest runs on.
    for (const fd of keptOpen) { try { setCloexec(fd, true); } catch { /* closed meanwhile: nothing to restore */ } }
    if (keeper > 0) await releaseKeeper(keeper).catch((k) => process.stderr.write(`minivmm: ${(k as Error).message}\n`));
    if (stateFd >= 0) close(stateFd);
    await vmm.abortUpdate(u, (e as Error).message);
  }
}

/**
 * New image (bin/minivmm.js, from its first statements): read the state named in the
 * environment, adopt the inherited fds, rebuild and resume the VM. `early`: the signals
 * recorded since the entry point's first statement.
 */
export async function incomingExec(migrators: Migrators, entryTime: bigint, early: EarlySignals): Promise<Vmm> {
  const loaded = now();
  const h = takeHandoff(process.env);
  const state: CprState = decodeState(readSealedState(h.stateFd));
  const decoded = now();
  cprAdoptFds(state.fds);
  const choice = accelArg(process.argv.slice(2));
  if (choice) state.vmm.machine.config.accel = choice;
  const { accel } = await openAccelerator(choice ?? state.vmm.machine.accel);
  return Vmm.fromState(state.vmm, accel, migrators, {
    mode: 'cpr-exec', saved: h.saved, sent: h.sent, arrived: entryTime, loaded, decoded,
    oldAddressSpace: h.keeper > 0 ? 'kept until resume' : 'torn down by exec',
  }, {
    signals: early,
    inject: takeInject(),
    afterResume: () => {
      // The guest runs: the old address space may go now, on another CPU.
      if (h.keeper > 0) releaseKeeper(h.keeper).catch((e) => process.stderr.write(`minivmm: ${(e as Error).message}\n`));
      cprCloseOnExec();
      restoreEnv();
    },
  });
}
