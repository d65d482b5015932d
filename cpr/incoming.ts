// cpr-exec, new image: read and check the state, map the same RAM memfds, build a new KVM VM,
// restore the vCPUs and devices, resume. Everything not needed before the guest runs again
// (the monitor, the logger) comes after the resume.
import { fstatSync, readSync } from 'node:fs';
import { close, setCloexec } from '../src/libc.js';
import { GuestMemory } from '../src/memory.js';
import { Machine, type VmShell } from '../vmm/machine.js';
import { decodeState, findFd, type CprState } from './state.js';
import { STATE_ENV, TIMES_ENV } from './exec.js';
import { Vmm, VERSION, recordSignals, type UpdateResult, type EarlySignals } from '../vmm/vmm.js';
import { VhostVdpa } from '../devices/vhost-vdpa.js';
import { stopDaemon, watchDaemon, restartDaemonIfGone } from '../vmm/vdpa.js';
import { MIGRATORS, restoreEnv } from './exec.js';
import { setLogLevel } from '../vmm/log.js';

const ms = (a: bigint, b: bigint): number => Number(b - a) / 1e6;
const HISTORY_KEPT = 16;
const round = (x: number): number => Math.round(x * 100) / 100;

/** Reads the state blob from the inherited memfd (pread: no need to seek it back to 0). */
export function readStateBlob(fd: number): Buffer {
  const size = fstatSync(fd).size;
  const blob = Buffer.alloc(size);
  let off = 0;
  while (off < size) {
    const n = readSync(fd, blob, off, size - off, off);
    if (n === 0) break;
    off += n;
  }
  return blob.subarray(0, off);
}

/** When the state left the old image and reached this one (ns, CLOCK_MONOTONIC). */
export interface Handoff {
  mode: 'cpr-exec' | 'cpr-transfer';
  saved: bigint; // old image: state written
  sent: bigint; // old image: execve called / message sent
  arrived: bigint; // this image: first JS statement / message received
  loaded: bigint; // this image: modules loaded
}

/**
 * cpr-exec: the state memfd named in the environment. `early`: signals recorded since the entry
 * point's first statement (bin/minivmm.js).
 */
export async function incoming(entryTime: bigint, early: EarlySignals = recordSignals()): Promise<Vmm> {
  const loaded = process.hrtime.bigint();
  const fdText = process.env[STATE_ENV]!;
  const [saved, execT0] = (process.env[TIMES_ENV] ?? '').split(',').map((x) => (/^\d+$/.test(x) ? BigInt(x) : entryTime));
  delete process.env[STATE_ENV];
  delete process.env[TIMES_ENV];
  const stateFd = Number(fdText);
  if (!Number.isInteger(stateFd) || stateFd < 0) throw new Error(`${STATE_ENV}=${fdText} does not name an fd`);
  let state: CprState;
  try { state = decodeState(readStateBlob(stateFd)); } finally { try { close(stateFd); } catch { /* already closed */ } }
  return restoreVm(state, { mode: 'cpr-exec', saved: saved ?? entryTime, sent: execT0 ?? entryTime, arrived: entryTime, loaded }, { signals: early });
}

/**
 * Rebuild the VM from a decoded state whose fds are open in this process, and resume it.
 * `beforeResume` runs after every device is restored and before the vCPUs run (a transfer's
 * last point of no return); `afterResume` right after they run.
 */
export async function restoreVm(state: CprState, h: Handoff, hooks: { beforeResume?: () => void; afterResume?: () => void; shell?: VmShell; signals?: EarlySignals } = {}): Promise<Vmm> {
  const t = { decoded: process.hrtime.bigint(), vm: 0n, devices: 0n, resumed: 0n };
  const vmm = new Vmm(MIGRATORS);
  const { machine: ms0, fds } = state;
  const serialFd = ms0.config.serial === 'stdio' ? 1 : findFd(fds, 'serial');
  const inject = process.env.MINIVMM_INJECT;
  delete process.env.MINIVMM_INJECT;
  // RAM the VM shell already has (cpr-transfer) must be the RAM the state describes.
  const pre = hooks.shell?.mem;
  if (pre && (pre.regions.length !== ms0.memory.length || pre.regions.some((r, i) => r.gpa !== ms0.memory[i].gpa || r.size !== ms0.memory[i].size || r.fd !== findFd(fds, 'ram', i)))) {
    throw new Error('the RAM sent ahead does not match the state');
  }
  const mem = pre ?? GuestMemory.adopt(ms0.memory.map((r, i) => ({ ...r, fd: findFd(fds, 'ram', i) })));
  vmm.machine = Machine.restore(ms0, mem, serialFd, vmm.onVcpuEvent, hooks.shell);
  t.vm = process.hrtime.bigint();
  vmm.daemon = ms0.devices.vdpaDaemon;
  vmm.exitHooks.push(() => stopDaemon(vmm.daemon));
  const devices: NonNullable<UpdateResult['devices']> = [];
  for (const s of ms0.devices.vdpa ?? []) {
    const inherited = s.path === 'new-owner' ? findFd(fds, 'vdpa', s.index) : null;
    const eventfds = (kind: string) => fds.filter((f) => f.name === `vdpa-${kind}-${s.index}`).sort((a, b) => a.id - b.id).map((f) => f.fd);
    let r: ReturnType<typeof VhostVdpa.restore>;
    try {
      r = VhostVdpa.restore(s, inherited, vmm.machine.parts.vm, mem, inject, { kick: eventfds('kick'), call: eventfds('call') });
    } catch (e) {
      // The embedded daemon died during the update: start it again and bring the device up by
      // the slow path (a fresh device, the saved ring bases), rather than lose the guest.
      if (inject || !s.devicePath.startsWith(`${vmm.daemon?.dir}/`) || !await restartDaemonIfGone(vmm)) throw e;
      r = VhostVdpa.restore({ ...s, path: 'fallback' }, null, vmm.machine.parts.vm, mem, undefined, { kick: eventfds('kick'), call: eventfds('call') });
      r.note = `the device daemon died during the update (${(e as Error).message}); restarted, device re-acquired by the slow path`;
    }
    vmm.vdpa.push(r.dev);
    vmm.machine.mmioDevices.push(r.dev.transport);
    devices.push({ index: s.index, path: r.path, note: r.note, timings: Object.fromEntries(Object.entries(r.timings).map(([k, v]) => [k, round(v as number)])) });
  }
  t.devices = process.hrtime.bigint();
  if (inject === 'new-process-crash') {
    // Fault injection (tests, demo): die with the devices taken over and before acknowledging.
    process.stderr.write('minivmm: injected crash of the new process before it acknowledges\n');
    process.kill(process.pid, 'SIGKILL');
  }
  if (inject === 'new-process-hang') {
    // Fault injection (tests): go silent (stopped) with the devices taken over, before acknowledging.
    process.stderr.write('minivmm: injected hang of the new process before it acknowledges\n');
    process.kill(process.pid, 'SIGSTOP');
  }
  hooks.beforeResume?.();
  vmm.machine.start();
  t.resumed = process.hrtime.bigint();
  hooks.afterResume?.();
  for (const d of vmm.vdpa) d.notifyAll(); // notifications lost in the pause

  restoreEnv();
  // The guest runs again. Kept fds get CLOEXEC back so nothing we spawn inherits them.
  for (const f of fds) { try { setCloexec(f.fd, true); } catch { /* closed by a failed fast path */ } }
  const u = state.update;
  const sum = (k: 'newOwner' | 'remap' | 'map') => round(devices.reduce((a, d) => a + (d.timings[k] ?? 0), 0));
  const result: UpdateResult = {
    n: u.n,
    mode: h.mode,
    path: devices.length === 0 ? 'none' : devices.some((d) => d.path === 'fallback') ? 'fallback' : 'new-owner',
    devices,
    downtime: round(ms(u.t.pauseStart, t.resumed)),
    setup: round(ms(u.t.requested ?? u.t.pauseStart, u.t.pauseStart)),
    phases: {
      pause: round(ms(u.t.pauseStart, u.t.paused)),
      save: round(ms(u.t.paused, h.saved)),
      [h.mode === 'cpr-exec' ? 'exec' : 'transfer']: round(ms(h.sent, h.arrived)),
      restore: round(ms(h.arrived, t.devices)),
      resume: round(ms(t.devices, t.resumed)),
      load: round(ms(h.arrived, h.loaded)),
      decode: round(ms(h.loaded, t.decoded)),
      kvm: round(ms(t.decoded, t.vm)),
      devices: round(ms(t.vm, t.devices)),
      new_owner: sum('newOwner'),
      remap: sum('remap'),
      repin: sum('map'),
    },
  };
  vmm.updates = u.n;
  // Only the last few records travel on: the state (and so the blackout) must not grow with the VM's age.
  vmm.history = [...u.history, { n: u.n, downtime: result.downtime, path: result.path, phases: result.phases }].slice(-HISTORY_KEPT);
  vmm.migration = { status: 'completed', last: result };
  if (ms0.config.qmp) {
    const { QmpServer } = await import('../vmm/qmp.js');
    await vmm.startMonitor(await QmpServer.adopt(findFd(fds, 'qmp'), VERSION));
    vmm.params.mode = h.mode;
    vmm.qmp!.event('RESUME');
    vmm.qmp!.event('MIGRATION', { status: 'completed' });
  }
  setLogLevel(ms0.config.logLevel);
  await vmm.logUpdate(result);
  vmm.handleSignals(hooks.signals);
  watchDaemon(vmm);
  return vmm;
}
