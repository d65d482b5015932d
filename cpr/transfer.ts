// cpr-transfer (QEMU 10's mode, plus rollback): the new process is started first, loads
// everything, and waits on a UNIX socket. The old one pauses, quiesces its devices and sends the
// state and every kept fd (SCM_RIGHTS). The new one restores (VHOST_NEW_OWNER moves each device
// between two live processes; REMAP re-points it) and says `ready`; the old one answers `commit`
// and exits; only then does the new one run the guest. If `ready` does not come (the new process
// died, failed or went silent), the old one kills it, takes its devices back (NEW_OWNER again,
// REMAP to its own addresses) and resumes the guest: rollback. Two processes never run the guest.
import { existsSync, lstatSync, unlinkSync, chmodSync, renameSync } from 'node:fs';
import {
  socket, bind, listen, connect, acceptAsync, peerPid, setRecvTimeout, sendWithFds, recvWithFds, read, write, close, dup,
  SOCK_SEQPACKET, processAlive,
} from '../src/libc.js';
import { warmUpCodec, decodeState, type CprState } from './state.js';
import { keptFds, saveForUpdate } from './exec.js';
import { readStateBlob, restoreVm } from './incoming.js';
import { log } from '../vmm/log.js';
import { Machine } from '../vmm/machine.js';
import { GuestMemory } from '../src/memory.js';
import { recordSignals, type Vmm } from '../vmm/vmm.js';
import type { VhostVdpa, VdpaState } from '../devices/vhost-vdpa.js';

const MAGIC = 'minivmm-cpr-transfer', VERSION = 2;
export const DEFAULT_TRANSFER_TIMEOUT_MS = 5000;
const now = (): bigint => process.hrtime.bigint();

interface Header { magic: string; version: number; saved: string; sent: string }
/** The first message, sent while the guest still runs: the RAM memfds, which never change. */
interface MemoryHeader { magic: string; version: number; memory: { name: string; gpa: number; size: number }[] }

/** Old image. `uri` is "unix:PATH" of the waiting new process. */
export async function cprTransfer(vmm: Vmm, uri: string, timeoutMs = DEFAULT_TRANSFER_TIMEOUT_MS): Promise<void> {
  const path = uri.slice('unix:'.length);
  const qmp = vmm.qmp;
  const fail = async (reason: string, rolledBack?: boolean) => {
    vmm.migration = { status: 'failed', error: reason, rolledBack, last: vmm.migration.last };
    qmp?.event('MIGRATION', { status: 'failed' });
    (await log()).error({ err: reason, rolled_back: rolledBack ?? false }, `cpr-transfer failed: ${reason}`);
    vmm.settle();
  };
  await warmUpCodec();
  // Only devices that can change owner while both processes live can be transferred.
  const stuck = vmm.vdpa.find((d) => d.updatePath !== 'new-owner' || vmm.params.vdpaPath === 'fallback');
  if (stuck) return fail(`vdpa device ${stuck.index} does not offer VHOST_NEW_OWNER: cpr-transfer needs it (use cpr-exec, which falls back)`);
  let sock: number;
  try { sock = socket(SOCK_SEQPACKET); connect(sock, path); } catch (e) { return fail(`cannot reach the new process at ${path}: ${(e as Error).message}`); }
  const peer = peerPid(sock);
  // Before pausing: hand over the RAM memfds, so the new process maps them and registers them
  // with its VM (KVM memory slots cost ~0.6 ms/GiB) while the guest still runs here.
  try {
    setRecvTimeout(sock, timeoutMs);
    const regions = vmm.machine.mem.regions;
    const mh: MemoryHeader = { magic: MAGIC, version: VERSION, memory: regions.map((r) => ({ name: r.name, gpa: r.gpa, size: r.size })) };
    sendWithFds(sock, Buffer.from(JSON.stringify(mh)), regions.map((r) => r.fd));
    const answer = (await recvWithFds(sock, 256, 0)).data.toString();
    if (answer !== 'mapped') throw new Error(answer ? `the new process refused the memory: ${answer}` : 'the new process closed the connection');
  } catch (e) {
    close(sock);
    killAndWait(peer); // it holds our RAM now: it must not live on (stopped, or confused)
    return fail(`cpr-transfer to ${path} failed before pausing the guest: ${(e as { code?: string }).code === 'EAGAIN' ? `no answer within ${timeoutMs} ms` : (e as Error).message}`);
  }

  vmm.migration.status = 'active';
  qmp?.event('MIGRATION', { status: 'active' });
  const t = { pauseStart: now(), paused: 0n, requested: vmm.migration.requested };
  const wasRunning = vmm.machine.running;
  await vmm.machine.pause();
  t.paused = now();
  qmp?.event('STOP');

  const prepared: [VhostVdpa, VdpaState][] = [];
  let stateFd = -1, qmpCopy = -1;
  let reason: string;
  try {
    const kept = keptFds(vmm);
    stateFd = saveForUpdate(vmm, 'cpr-transfer', t, kept, prepared);
    const header: Header = { magic: MAGIC, version: VERSION, saved: String(now()), sent: String(now()) };
    sendWithFds(sock, Buffer.from(JSON.stringify(header)), [stateFd, ...kept.filter((k) => k.name !== 'ram').map((k) => k.fd)]);
    close(stateFd); stateFd = -1;
    // Stop accepting monitor connections (the new process will), but keep a copy for a rollback.
    if (qmp) { qmpCopy = dup(qmp.fd); qmp.stopListening(); }
    const answer = (await recvWithFds(sock, 256, 0)).data.toString();
    if (answer === 'ready') {
      write('cpr-transfer commit', sock, Buffer.from('commit'));
      // A SIGTERM/SIGINT that came during the transfer was meant for the VM, which lives there now.
      if (vmm.pendingSignal) { try { process.kill(peer, vmm.pendingSignal); } catch { /* gone */ } }
      // The guest is the new process's now: leave without touching anything shared (no daemon
      // stop, no socket unlink, no device release: the new process holds the same files).
      process.exit(0);
    }
    reason = answer ? `the new process refused: ${answer}` : 'the new process closed the connection before it was ready';
  } catch (e) {
    reason = (e as { code?: string }).code === 'EAGAIN' ? `the new process was not ready within ${timeoutMs} ms` : (e as Error).message;
  }

  // Rollback: make sure the new process can never run the guest, then take everything back.
  try { write('cpr-transfer abort', sock, Buffer.from('abort')); } catch { /* gone */ }
  killAndWait(peer);
  close(sock);
  if (stateFd >= 0) close(stateFd);
  const errors: string[] = [];
  for (const [d, saved] of prepared) {
    try { d.takeBack(saved, vmm.machine.mem); } catch (e) { errors.push(`vdpa device ${d.index}: ${(e as Error).message}`); }
  }
  if (qmp && qmpCopy >= 0) await qmp.listenAgain(qmpCopy);
  if (wasRunning) { vmm.machine.resume(); qmp?.event('RESUME'); }
  return fail(`${reason}; rolled back to the old process${errors.length ? ` (${errors.join('; ')})` : ''}`, true);
}

/** SIGKILL `pid` and wait until it is gone (or a zombie): its fds are then closed. */
function killAndWait(pid: number): void {
  try { process.kill(pid, 'SIGKILL'); } catch { return; }
  const deadline = Date.now() + 5000;
  for (;;) {
    if (!processAlive(pid) || Date.now() > deadline) return;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
  }
}

/**
 * New image: listen on `path`, receive the state and fds, restore, wait for `commit`, run. The VM
 * shell for `smp` vCPUs (this process's own options) is built before the wait.
 */
export async function incomingTransfer(path: string, smp: number): Promise<Vmm> {
  const shell = Machine.createShell(smp);
  await warmUpCodec();
  if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
  // Bound under a temporary name and renamed once listening: whoever sees PATH can connect.
  const listener = socket(SOCK_SEQPACKET);
  const tmp = `${path}.${process.pid}.tmp`;
  bind(listener, tmp);
  chmodSync(tmp, 0o600);
  listen(listener, 1);
  renameSync(tmp, path);
  process.stderr.write(`minivmm: waiting for cpr-transfer on ${path}\n`);
  const conn = await acceptAsync(listener);
  close(listener);
  try { unlinkSync(path); } catch { /* gone */ }
  // First the RAM (the guest still runs in the old process): map it and register it with the VM.
  let ramFds: number[] = [];
  try {
    const m = await recvWithFds(conn, 4096, 16);
    ramFds = m.fds;
    const mh = JSON.parse(m.data.toString()) as MemoryHeader;
    if (mh.magic !== MAGIC || mh.version !== VERSION) throw new Error(`not a minivmm cpr-transfer v${VERSION} message`);
    if (!Array.isArray(mh.memory) || !mh.memory.length || mh.memory.length !== ramFds.length) throw new Error('the memory message does not match its fds');
    Machine.addMemory(shell, GuestMemory.adopt(mh.memory.map((r, i) => ({ name: String(r.name), gpa: Number(r.gpa), size: Number(r.size), fd: ramFds[i] }))));
    write('cpr-transfer mapped', conn, Buffer.from('mapped'));
  } catch (e) {
    try { write('cpr-transfer refusal', conn, Buffer.from(`bad memory: ${(e as Error).message}`)); } catch { /* gone */ }
    throw e;
  }
  const { data, fds } = await recvWithFds(conn, 4096, 250);
  const arrived = now();
  // From here this process holds the guest's fds: a signal must not kill it half-way.
  const early = recordSignals();
  let state: CprState;
  let header: Header;
  try {
    header = JSON.parse(data.toString()) as Header;
    if (header.magic !== MAGIC || header.version !== VERSION) throw new Error(`not a minivmm cpr-transfer v${VERSION} message`);
    if (fds.length < 1) throw new Error('no state fd in the message');
    state = decodeState(readStateBlob(fds[0]));
    close(fds[0]);
    // RAM came first; the rest follow the state fd in the state's order.
    const others = state.fds.filter((f) => f.name !== 'ram');
    if (others.length !== fds.length - 1) throw new Error(`the state names ${others.length} fds besides RAM, the message carried ${fds.length - 1}`);
    let k = 1;
    state.fds = state.fds.map((f) => ({ ...f, fd: f.name === 'ram' ? ramFds[f.id] ?? -1 : fds[k++] }));
    if (state.fds.some((f) => f.fd < 0)) throw new Error('the state names a RAM region the memory message did not carry');
  } catch (e) {
    try { write('cpr-transfer refusal', conn, Buffer.from(`bad transfer: ${(e as Error).message}`)); } catch { /* gone */ }
    throw e;
  }
  return restoreVm(state, { mode: 'cpr-transfer', saved: BigInt(header.saved), sent: BigInt(header.sent), arrived, loaded: arrived }, {
    shell, signals: early,
    beforeResume: () => {
      write('cpr-transfer ready', conn, Buffer.from('ready'));
      // Block until the old process commits (or exits, which also closes the socket). An abort
      // means it rolled back: this process must not run the guest.
      const answer = Buffer.alloc(16);
      let n = 0;
      try { n = read('cpr-transfer commit', conn, answer); } catch { n = 0; }
      const word = answer.subarray(0, n).toString();
      if (word === 'abort') { process.stderr.write('minivmm: cpr-transfer aborted by the old process; exiting\n'); process.exit(1); }
      close(conn);
    },
  });
}

