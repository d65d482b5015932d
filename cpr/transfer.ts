// cpr-transfer (QEMU 10's mode, plus rollback): the new process is started first, loads
// everything, and waits on a UNIX socket. The old one sends the RAM memfds while the guest still
// runs, then pauses, quiesces its devices and sends the state and every other kept fd
// (SCM_RIGHTS). The new one restores (VHOST_NEW_OWNER moves each device between two live
// processes; REMAP re-points it) and says `ready`; the old one answers `commit` and exits; only
// then does the new one run the guest. If `ready` does not come (the new process died, failed or
// went silent), the old one kills it, takes its devices back and resumes the guest: rollback.
// Two processes never run the guest.
import { existsSync, lstatSync, unlinkSync, chmodSync, renameSync } from 'node:fs';
import {
  socket, bind, listen, connect, acceptAsync, peerCredentials, setRecvTimeout, sendWithFds, recvWithFds, read, write, close, dup,
  SOCK_SEQPACKET, processAlive, type PeerCredentials,
} from '../src/libc.js';
import { cprAdoptFds, cprSaveFd } from '../src/cpr-fds.js';
import { GuestMemory } from '../src/memory.js';
import type { Accelerator } from '../src/accel/index.js';
import { Vmm, recordSignals, type Migrators } from '../vmm/vmm.js';
import { warmUpCodec, sealState, readSealedState, decodeState, type CprState } from './envelope.js';
import { takeInject } from './exec.js';

const MAGIC = 'minivmm-cpr-transfer', VERSION = 2;
export const DEFAULT_TRANSFER_TIMEOUT_MS = 5000;
const now = (): bigint => process.hrtime.bigint();

/** The first message, sent while the guest still runs: the RAM memfds, which never change. */
interface MemoryHeader { magic: string; version: number; memory: { name: string; gpa: number; size: number }[] }
/** The second, after the pause: the sealed state's fd first, then the other kept fds in the state's order. */
interface StateHeader { magic: string; version: number; saved: string; sent: string }

/** Old image: one live update to the process waiting at `uri` ("unix:PATH"). */
export async function cprTransfer(vmm: Vmm, uri: string, timeoutMs = DEFAULT_TRANSFER_TIMEOUT_MS): Promise<void> {
  const path = uri.slice('unix:'.length);
  await warmUpCodec();
  // Only devices that can change owner while both processes live can be transferred.
  const stuck = vmm.vdpa.find((d) => d.updatePath !== 'new-owner' || vmm.params.vdpaPath === 'fallback');
  if (stuck) return vmm.failUpdate(`vdpa device ${stuck.index} does not offer VHOST_NEW_OWNER: cpr-transfer needs it (use cpr-exec, which falls back)`);
  let sock = -1, cred: PeerCredentials;
  try { sock = socket(SOCK_SEQPACKET); connect(sock, path); cred = peerCredentials(sock); } catch (e) {
    if (sock >= 0) close(sock);
    return vmm.failUpdate(`cannot reach the new process at ${path}: ${(e as Error).message}`);
  }
  // Check the peer before it gets any fd.
  const refused = transferPeerRefusal(cred, { pid: process.pid, uid: process.getuid!() });
  if (refused) { close(sock); return vmm.failUpdate(`cpr-transfer to ${path} refused before sending anything: ${refused}`); }
  const peer = cred.pid;

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
    return vmm.failUpdate(`cpr-transfer to ${path} failed before pausing the guest: ${(e as { code?: string }).code === 'EAGAIN' ? `no answer within ${timeoutMs} ms` : (e as Error).message}`);
  }

  const u = await vmm.beginUpdate('cpr-transfer');
  if (!u) { close(sock); killAndWait(peer); return; }
  let stateFd = -1, qmpCopy = -1;
  let reason: string;
  try {
    stateFd = sealState({ vmm: u.state, fds: u.fds });
    const header: StateHeader = { magic: MAGIC, version: VERSION, saved: String(now()), sent: String(now()) };
    sendWithFds(sock, Buffer.from(JSON.stringify(header)), [stateFd, ...u.fds.filter((k) => k.name !== 'ram').map((k) => k.fd)]);
    close(stateFd); stateFd = -1;
    // Stop accepting monitor connections (the new process will), but keep a copy for a rollback.
    if (vmm.qmp) { qmpCopy = dup(vmm.qmp.fd); vmm.qmp.stopListening(); }
    const answer = (await recvWithFds(sock, 256, 0)).data.toString();
    if (answer === 'ready') {
      write('cpr-transfer commit', sock, Buffer.from('commit'));
      // A SIGTERM/SIGINT that came during the transfer was meant for the VM, which lives there now.
      if (vmm.pendingSignal) { try { process.kill(peer, vmm.pendingSignal); } catch { /* it is gone: nothing to forward to */ } }
      // The guest is the new process's now: leave without touching anything shared (no daemon
      // stop, no socket unlink, no device release: the new process holds the same files).
      process.exit(0);
    }
    reason = answer ? `the new process refused: ${answer}` : 'the new process closed the connection before it was ready';
  } catch (e) {
    reason = (e as { code?: string }).code === 'EAGAIN' ? `the new process was not ready within ${timeoutMs} ms` : (e as Error).message;
  }

  // Rollback: make sure the new process can never run the guest, then take everything back.
  try { write('cpr-transfer abort', sock, Buffer.from('abort')); } catch { /* it is gone: killed below anyway */ }
  killAndWait(peer);
  close(sock);
  if (stateFd >= 0) close(stateFd);
  if (vmm.qmp && qmpCopy >= 0) { await vmm.qmp.listenAgain(qmpCopy); cprSaveFd('qmp', 0, vmm.qmp.fd); }
  await vmm.abortUpdate(u, reason, true);
}

/**
 * Whether the process listening on the transfer socket may receive the guest's fds: whoever holds
 * a vdpa fd can take the device with VHOST_NEW_OWNER, and the RAM memfds are the guest. It must be
 * our own user (or root) and a process other than this one, which already runs the guest; its pid
 * must be visible (it is killed by pid on a rollback). `peer` is SO_PEERCRED: the listener's
 * credentials when it called listen(2). Returns why it is refused, or null.
 */
export function transferPeerRefusal(peer: PeerCredentials, self: { pid: number; uid: number }): string | null {
  if (peer.uid !== self.uid && peer.uid !== 0) return `the process listening there (pid ${peer.pid}) runs as uid ${peer.uid}, not as uid ${self.uid} or root`;
  if (peer.pid <= 0) return `the process listening there (uid ${peer.uid}) is outside this pid namespace`;
  if (peer.pid === self.pid) return 'the socket is this process\'s own, and this process already runs the guest';
  return null;
}

/** SIGKILL `pid` and wait until it is gone (or a zombie): its fds are then closed. */
function killAndWait(pid: number): void {
  try { process.kill(pid, 'SIGKILL'); } catch { return; /* ESRCH: already gone */ }
  const deadline = Date.now() + 5000;
  for (;;) {
    if (!processAlive(pid) || Date.now() > deadline) return;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
  }
}

/**
 * New image: listen on `path`, take the RAM, then the state and fds, restore, wait for `commit`,
 * run. The VM (its vCPUs, irqchip, PIT) is built before the wait, on this process's accelerator.
 */
export async function incomingTransfer(migrators: Migrators, path: string, smp: number, accel: Accelerator): Promise<Vmm> {
  const vm = accel.createVm(smp);
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
  try { unlinkSync(path); } catch { /* already gone: nobody else may connect anyway */ }
  const refuse = (what: string, e: unknown): never => {
    try { write('cpr-transfer refusal', conn, Buffer.from(`${what}: ${(e as Error).message}`)); } catch { /* the old process is gone */ }
    throw e;
  };

  // First the RAM (the guest still runs in the old process): map it and register it with the VM.
  let ramFds: number[] = [];
  try {
    const m = await recvWithFds(conn, 4096, 16);
    ramFds = m.fds;
    const mh = JSON.parse(m.data.toString()) as MemoryHeader;
    if (mh.magic !== MAGIC || mh.version !== VERSION) throw new Error(`not a minivmm cpr-transfer v${VERSION} message`);
    if (!Array.isArray(mh.memory) || !mh.memory.length || mh.memory.length !== ramFds.length) throw new Error('the memory message does not match its fds');
    vm.setMemory(GuestMemory.adopt(mh.memory.map((r, i) => ({ name: String(r.name), gpa: Number(r.gpa), size: Number(r.size), fd: ramFds[i] }))));
    write('cpr-transfer mapped', conn, Buffer.from('mapped'));
  } catch (e) { refuse('bad memory', e); }

  const { data, fds } = await recvWithFds(conn, 4096, 250);
  const arrived = now();
  // From here this process holds the guest's fds: a signal must not kill it half-way.
  const early = recordSignals();
  let state: CprState;
  let header: StateHeader;
  try {
    header = JSON.parse(data.toString()) as StateHeader;
    if (header.magic !== MAGIC || header.version !== VERSION) throw new Error(`not a minivmm cpr-transfer v${VERSION} message`);
    if (fds.length < 1) throw new Error('no state fd in the message');
    state = decodeState(readSealedState(fds[0]));
    // RAM came first; the rest follow the state fd in the state's order.
    const others = state.fds.filter((f) => f.name !== 'ram');
    if (others.length !== fds.length - 1) throw new Error(`the state names ${others.length} fds besides RAM, the message carried ${fds.length - 1}`);
    let k = 1;
    state.fds = state.fds.map((f) => ({ ...f, fd: f.name === 'ram' ? ramFds[f.id] ?? -1 : fds[k++] }));
    if (state.fds.some((f) => f.fd < 0)) throw new Error('the state names a RAM region the memory message did not carry');
    const pre = vm.memory!.regions, layout = state.vmm.machine.memory;
    if (pre.length !== layout.length || pre.some((r, i) => r.gpa !== layout[i].gpa || r.size !== layout[i].size)) throw new Error('the RAM sent ahead does not match the state');
  } catch (e) { refuse('bad transfer', e); }
  cprAdoptFds(state!.fds);
  return Vmm.fromState(state!.vmm, accel, migrators, { mode: 'cpr-transfer', saved: BigInt(header!.saved), sent: BigInt(header!.sent), arrived, loaded: arrived }, {
    vm, signals: early, inject: takeInject(),
    beforeResume: () => {
      write('cpr-transfer ready', conn, Buffer.from('ready'));
      // Block until the old process commits (or exits, which also closes the socket). An abort
      // means it rolled back: this process must not run the guest.
      const answer = Buffer.alloc(16);
      let n = 0;
      try { n = read('cpr-transfer commit', conn, answer); } catch { n = 0; /* reset: the old process is gone, as if it had closed */ }
      if (answer.subarray(0, n).toString() === 'abort') { process.stderr.write('minivmm: cpr-transfer aborted by the old process; exiting\n'); process.exit(1); }
      close(conn);
    },
  });
}
