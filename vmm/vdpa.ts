// `--vdpa` devices: a vhost-vdpa node path, or `sim:` and an embedded device spec without a name
// (devices/vdpa/spec.ts: `sim:net|blk[,va|pa][,no-new-owner][,...]`), served by the embedded
// device daemon (started here, for the VM's lifetime: it survives our exec).
import { mkdtempSync, rmdirSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostVdpa } from '../devices/vhost-vdpa.js';
import { VIRTIO_MMIO_SIZE } from '../devices/virtio-mmio.js';
import type { Machine } from './machine.js';
import type { GuestMemory } from '../src/memory.js';
import type { DaemonRef } from './state.js';
import { prlimit, RLIMIT_MEMLOCK, processAlive, reapWhenExited } from '../src/libc.js';
import type { BootDevice } from './boot.js';
import { log } from './log.js';
import { DeviceSpecError, parseDeviceSpec, type DeviceSpec } from '../devices/vdpa/spec.js';

export const VDPA_MMIO_BASE = 0xd0000000, VDPA_GSI_BASE = 16, MAX_VDPA = 8;

export type VdpaSpec = { kind: 'path'; path: string } | ({ kind: 'sim' } & DeviceSpec);

export class VdpaSpecError extends Error {}

export function parseVdpaSpec(text: string): VdpaSpec {
  const shown = JSON.stringify(text).slice(1, -1);
  if (!text.startsWith('sim:')) {
    if (!text.startsWith('/') && !text.startsWith('.')) throw new VdpaSpecError(`--vdpa ${shown}: expected a device path or sim:net|sim:blk[,va|pa][,no-new-owner]`);
    return { kind: 'path', path: text };
  }
  // The daemon names the devices (vdpa0, ...) and their nodes (vhost-vdpa-N): no NAME here.
  if (/^[^:=,]*[:=]/.test(text.slice(4))) throw new VdpaSpecError(`--vdpa ${shown}: no device name after sim:`);
  try { return { kind: 'sim', ...parseDeviceSpec(text.slice(4), 'vdpa0') }; } catch (e) {
    if (e instanceof DeviceSpecError) throw new VdpaSpecError(`--vdpa ${e.message}`);
    throw e;
  }
}

export type { DaemonRef };

/** What daemon supervision needs from the VM the daemon serves (the Vmm). */
export interface DaemonOwner {
  daemon?: DaemonRef;
  readonly updating: boolean;
  readonly stopping: boolean;
  readonly vdpa: VhostVdpa[];
  readonly machine: { readonly mem: GuestMemory };
  readonly exitHooks: (() => Promise<void> | void)[];
  event(name: string, data: Record<string, unknown>): void;
}

/** Starts the daemon for the sim devices (if any); returns the node path of every device, in order. */
export async function resolveVdpaPaths(specs: VdpaSpec[], ramBytes: number): Promise<{ paths: string[]; daemon?: DaemonRef }> {
  const sims = specs.filter((s): s is Extract<VdpaSpec, { kind: 'sim' }> => s.kind === 'sim');
  let daemon: DaemonRef | undefined;
  const simPaths: string[] = [];
  if (sims.length) {
    const { startVdpaDaemon } = await import('../devices/vdpa/launch.js');
    const dir = mkdtempSync(join(tmpdir(), 'minivmm-vdpa-'));
    // A blk disk lives in a file beside the mount (unless given), so that a restarted daemon serves the same one.
    const disk = (s: DeviceSpec, i: number) => (s.type === 'blk' && !s.backing ? `${dir}.disk${i}` : undefined);
    // Pinning devices count guest RAM against our RLIMIT_MEMLOCK. Where it cannot be raised far
    // enough (no CAP_SYS_RESOURCE), tell the embedded device the limit `ulimit -l` would have set.
    const need = memlockNeed(ramBytes, sims.filter((s) => s.dma === 'pa').length);
    const memlockLimit = sims.some((s) => s.dma === 'pa') && raiseMemlock(need) < need ? need : undefined;
    const d = await startVdpaDaemon({
      dir, memlockLimit,
      devices: sims.map(({ kind: _, ...s }, i) => ({ ...s, name: `vdpa${i}`, backing: s.backing ?? disk(s, i) })),
    });
    daemon = { pid: d.pid, dir: d.dir, args: d.args, restarts: 0, files: sims.flatMap((s, i) => disk(s, i) ?? []) };
    simPaths.push(...d.paths);
  }
  return { paths: specs.map((s) => (s.kind === 'path' ? s.path : simPaths.shift()!)), daemon };
}

/**
 * Devices that pin (PA mode) count guest RAM against RLIMIT_MEMLOCK, root included (§3.9 of
 * docs/vhost-vdpa-live-update.md). Raise the limit to cover every device pinning all of RAM, as
 * one would with `ulimit -l`; the new image inherits it across exec, which the fast path needs (§4.1).
 */
const memlockNeed = (ramBytes: number, devices: number): bigint => BigInt(ramBytes) * BigInt(devices) + 64n * 2n ** 20n;

/** Raises RLIMIT_MEMLOCK towards `need`; returns the soft limit it got. */
function raiseMemlock(need: bigint): bigint {
  const [soft, hard] = prlimit(0, RLIMIT_MEMLOCK);
  if (soft >= need) return soft;
  try {
    prlimit(0, RLIMIT_MEMLOCK, [need, hard > need ? hard : need]);
    return need;
  } catch {
    // Without CAP_SYS_RESOURCE the hard limit stays; go as far as it allows. A pinning device
    // then refuses the mapping and the error says why.
    if (hard > soft) prlimit(0, RLIMIT_MEMLOCK, [hard, hard]);
    return hard;
  }
}

export function ensureMemlock(ramBytes: number, devices: number): void { raiseMemlock(memlockNeed(ramBytes, devices)); }

/** Opens every device on a fresh machine and puts its transport on the MMIO bus. */
export function attachVdpa(machine: Machine, paths: string[]): { devices: VhostVdpa[]; boot: BootDevice[] } {
  if (paths.length > MAX_VDPA) throw new VdpaSpecError(`at most ${MAX_VDPA} --vdpa devices`);
  if (paths.length) ensureMemlock(machine.mem.size, paths.length);
  const devices: VhostVdpa[] = [];
  try {
    paths.forEach((p, i) => {
      devices.push(VhostVdpa.open(p, i, machine.vm, machine.mem, VDPA_GSI_BASE + i, VDPA_MMIO_BASE + i * VIRTIO_MMIO_SIZE));
    });
  } catch (e) {
    for (const d of devices) d.close();
    throw e;
  }
  for (const d of devices) machine.mmioDevices.push(d.transport);
  return { devices, boot: devices.map((d) => ({ type: d.deviceId, irq: d.gsi, base: d.base, size: VIRTIO_MMIO_SIZE })) };
}

/** Stops the daemon and removes what it left: its mount point, disk files and log. */
export async function stopDaemon(d: DaemonRef | undefined): Promise<void> {
  if (!d) return;
  const { stopVdpaDaemon, defaultDaemonLog } = await import('../devices/vdpa/launch.js');
  await stopVdpaDaemon(d.pid, d.dir);
  try { rmdirSync(d.dir); } catch { /* not empty or gone */ }
  for (const f of [...d.files ?? [], defaultDaemonLog(d.dir)]) { try { unlinkSync(f); } catch { /* gone */ } }
}

const WATCH_MS = 100, MAX_FAILED_RESTARTS = 5;

/**
 * Supervises the embedded daemon (a real kernel's devices cannot die; this stand-in can): when it
 * is gone, start it again with the same arguments and re-attach every device it serves
 * (VhostVdpa.reattach). Checked every 100 ms, never during a live update or on the way out.
 */
export function watchDaemon(vmm: DaemonOwner): void {
  if (!vmm.daemon?.args) return;
  let busy = false, failures = 0;
  const timer = setInterval(() => {
    const d = vmm.daemon;
    if (busy || !d || vmm.updating || vmm.stopping || failures >= MAX_FAILED_RESTARTS || processAlive(d.pid)) return;
    busy = true;
    recoverDaemon(vmm, d).then(() => { failures = 0; }, async (e: Error) => {
      failures++;
      (await log()).error({ err: e.message, attempt: failures }, `vdpa daemon restart failed: ${e.message}${failures >= MAX_FAILED_RESTARTS ? '; giving up (its devices stay stalled)' : ''}`);
    }).finally(() => { busy = false; });
  }, WATCH_MS);
  timer.unref();
  vmm.exitHooks.unshift(() => clearInterval(timer)); // before the daemon is stopped on purpose
}

/**
 * Starts the daemon again if it is gone (same arguments, same mount); true if it did. Also used by
 * a new image whose daemon died during the update, before it brings the devices up again.
 */
export async function restartDaemonIfGone(vmm: DaemonOwner, waitMs = 0): Promise<boolean> {
  const d = vmm.daemon;
  if (!d?.args) return false;
  // A daemon killed a moment ago may still be on its way out (its device connections already
  // aborted): give it `waitMs` to be gone before deciding it lives.
  for (const deadline = Date.now() + waitMs; processAlive(d.pid) && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 10));
  if (processAlive(d.pid)) return false;
  // Our child since the first image (exec keeps the pid), which Node no longer tracks after an
  // exec: reap it, or it stays a zombie until the VM ends. A killed multi-threaded process shows
  // as a zombie before its last thread is gone, and cannot be reaped until then: keep trying.
  void reapWhenExited(d.pid);
  const { spawnVdpaDaemon } = await import('../devices/vdpa/launch.js');
  process.stderr.write(`minivmm: vdpa daemon (pid ${d.pid}) is gone; restarting it\n`);
  const { pid } = await spawnVdpaDaemon(d.dir, d.args);
  vmm.daemon = { ...d, pid, restarts: (d.restarts ?? 0) + 1 };
  return true;
}

async function recoverDaemon(vmm: DaemonOwner, d: DaemonRef): Promise<void> {
  const t0 = performance.now();
  if (!await restartDaemonIfGone(vmm)) return;
  const served = vmm.vdpa.filter((dev) => dev.devicePath.startsWith(`${d.dir}/`));
  for (const dev of served) dev.reattach(vmm.machine.mem);
  const outage = Math.round((performance.now() - t0) * 10) / 10;
  const pid = vmm.daemon!.pid;
  vmm.event('VDPA_DAEMON_RESTARTED', { pid, devices: served.map((dev) => dev.index), 'outage-ms': outage });
  (await log()).warn({ pid, outage_ms: outage }, `vdpa daemon restarted (pid ${pid}); ${served.length} device(s) re-attached in ${outage} ms`);
}
