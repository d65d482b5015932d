// Programmatic start/stop of the vhost-vdpa device daemon (used by the VMM and the tests).
// The daemon runs detached (own session), so it outlives the caller's exec; it stays killable by
// pid, and stop() works from any process that knows the pid and directory.
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { umount2, MNT_DETACH, processAlive } from '../../src/libc.js';
import type { FaultOp } from './device.js';
import { formatDeviceSpec, type DeviceSpec, type Quirks } from './spec.js';

export interface StartVdpaOptions {
  dir: string;
  devices: DeviceSpec[];
  pinCostMsPerGib?: number;
  /** RLIMIT_MEMLOCK to assume for every caller (bytes), where the real one cannot be raised. */
  memlockLimit?: bigint;
  /** Daemon log (stderr); default $TMPDIR/minivmm-vdpa-<basename>.log */
  logFile?: string;
  /** How long to wait for `ready` (ms, default 15000). */
  timeoutMs?: number;
}

export interface VqStatus { num: number; enabled: boolean; last_avail: number; used_idx: number }
export interface DeviceStatus {
  name: string; node: string; deleting: boolean;
  mgmtdev: string; deviceId: number; vendorId: number; maxVqs: number; maxVqSize: number;
  type: 'net' | 'blk'; dma: 'va' | 'pa'; model: 'patched' | 'no-new-owner';
  quirks: Required<Quirks>;
  open: boolean;
  owner: { pid: number; fingerprint: string } | null;
  status: number;
  suspended: boolean;
  features: string; backendFeatures: string; advertisedBackendFeatures: string; // hex
  vqs: VqStatus[];
  entries: number;
  addressSpaces: { asid: number; entries: { iova: string; size: string; perm: number; addr: string; file?: string }[]; parentEntries: number }[];
  inBatch: boolean;
  pinnedPages: number;
  counters: {
    opens: number; releases: number; ioctls: number; writes: number; errors: number; errnos: Record<string, number>;
    injected: number; framesLooped: number; framesDropped: number; blocksRead: number; blocksWritten: number; ringErrors: number; calls: number; kicks: number;
  };
  lastRingError: string | null;
  /** Armed fault injections, by operation. */
  faults: Record<string, { errno?: string; delayMs?: number; times: number }>;
}
export interface DaemonStatus {
  pid: number; dir: string; pinCostMsPerGib: number;
  fuse: { requests: number; errors: number };
  /** `vdpa dev` commands waiting behind a del of an open device (manage.ts). */
  control: { commands: number; del: string | null };
  /** Pinned pages per address space (pid + fingerprint): the VmPin figure of that image. */
  vmPin: { pid: number; fingerprint: string; pages: number }[];
  devices: DeviceStatus[];
}
export interface VdpaDaemon {
  pid: number; dir: string;
  /** The node of every device, in the order given (DIR/vhost-vdpa-N). */
  paths: string[];
  /** The node of the device named `name`. */
  pathOf(name: string): string;
  /** Its command-line arguments (spawnVdpaDaemon restarts it with them). */
  args: string[];
  stop(): Promise<void>;
  status(): DaemonStatus;
}

/** The compiled daemon entry (dist/devices/vdpa/daemon-main.js), also when this file runs as .ts. */
export function daemonScript(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const local = join(here, 'daemon-main.js');
  if (existsSync(local)) return local;
  const fromSrc = resolve(here, '../../dist/devices/vdpa/daemon-main.js');
  if (existsSync(fromSrc)) return fromSrc;
  throw new Error(`vdpa daemon not built: ${fromSrc} missing (run npx tsc -p .)`);
}

export function daemonArgs(o: StartVdpaOptions): string[] {
  const args = ['--dir', o.dir];
  for (const d of o.devices) args.push('--dev', formatDeviceSpec({ ...d, backing: d.backing && resolve(d.backing) }));
  if (o.pinCostMsPerGib !== undefined) args.push('--pin-cost-ms-per-gib', String(o.pinCostMsPerGib));
  if (o.memlockLimit !== undefined) args.push('--memlock-limit', String(o.memlockLimit));
  return args;
}

/**
 * Arms fault injection (the daemon's `faults` file): the next `times` calls of `op` on `device`
 * fail with `fault` (an errno name), or are held first (`delay:MS`).
 */
export function injectVdpaFault(dir: string, device: string, op: FaultOp, fault: string, times = 1): void {
  writeFileSync(join(dir, 'faults'), `${device} ${op} ${fault} ${times}\n`);
}

export const readDaemonStatus = (dir: string): DaemonStatus => JSON.parse(readFileSync(join(dir, 'status'), 'utf8')) as DaemonStatus;


/** SIGTERM the daemon, wait for it to go (SIGKILL after `graceMs`), make sure dir is unmounted. */
export async function stopVdpaDaemon(pid: number, dir: string, graceMs = 5000): Promise<void> {
  try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
  const t0 = Date.now();
  while (processAlive(pid) && Date.now() - t0 < graceMs) await new Promise((r) => setTimeout(r, 10));
  if (processAlive(pid)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    while (processAlive(pid)) await new Promise((r) => setTimeout(r, 10));
  }
  const mounted = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === resolve(dir));
  if (mounted) { try { umount2(dir, MNT_DETACH); } catch { /* raced */ } }
}

export async function startVdpaDaemon(o: StartVdpaOptions): Promise<VdpaDaemon> {
  const dir = resolve(o.dir);
  const args = daemonArgs({ ...o, dir });
  const { pid, nodes } = await spawnVdpaDaemon(dir, args, o.logFile, o.timeoutMs);
  return {
    pid, dir, args,
    paths: o.devices.map((d) => join(dir, nodes.get(d.name)!)),
    pathOf: (name) => join(dir, nodes.get(name) ?? `(no device ${name})`),
    status: () => readDaemonStatus(dir),
    async stop() { await stopVdpaDaemon(pid, dir); },
  };
}

/** Where a daemon serving `dir` logs when not told otherwise (the same path when it is restarted). */
export const defaultDaemonLog = (dir: string): string => join(tmpdir(), `minivmm-vdpa-${dir.replace(/[^A-Za-z0-9]+/g, '_')}.log`);

/**
 * Starts the daemon with `args` (daemonArgs) and waits for `ready`; returns its pid and the node
 * of each device by name. Also how a VMM restarts a daemon that died: the same arguments, the same
 * mount point (the daemon detaches the dead mount first).
 */
export async function spawnVdpaDaemon(dir: string, args: string[], logFile?: string, timeoutMs = 15000): Promise<{ pid: number; nodes: Map<string, string> }> {
  const logPath = logFile ?? defaultDaemonLog(dir);
  const logFd = openSync(logPath, 'a');
  const child = spawn(process.execPath, [daemonScript(), ...args], { detached: true, stdio: ['ignore', 'pipe', logFd] });
  closeSync(logFd);
  const pid = child.pid!;
  const nodes = new Map<string, string>();
  await new Promise<void>((res, rej) => {
    let out = '';
    const timer = setTimeout(() => fail(new Error(`vdpa daemon did not become ready in ${timeoutMs} ms (log: ${logPath})`)), timeoutMs);
    const fail = (e: Error) => { clearTimeout(timer); try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } rej(e); };
    child.on('exit', (code) => {
      let tail = '';
      try { tail = readFileSync(logPath, 'utf8').trim().split('\n').slice(-3).join(' | '); } catch { /* none */ }
      fail(new Error(`vdpa daemon exited with ${code} before ready: ${tail}`));
    });
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (!out.includes('ready\n')) return;
      for (const m of out.matchAll(/^node (\S+) (vhost-vdpa-\d+)$/gm)) nodes.set(m[1], m[2]);
      clearTimeout(timer); child.removeAllListeners('exit'); res();
    });
  });
  child.stdout!.destroy();
  child.unref();
  return { pid, nodes };
}
