// The embedded vhost-vdpa device daemon:
//   node dist/devices/vdpa/daemon-main.js --dir DIR --dev SPEC [--dev SPEC]...
//        [--pin-cost-ms-per-gib N] [--memlock-limit BYTES]
// SPEC is spec.ts's NAME:net|blk[,va|pa][,no-new-owner][,backing=FILE]... Mounts a FUSE file system
// at DIR with one file per device, named vhost-vdpa-N as in /dev, a read-only `status` file and
// root-only `faults` (fault injection, see worker.ts) and `control` (`vdpa dev add|del`, see
// manage.ts) files. Prints `node NAME vhost-vdpa-N` per device and then `ready` on stdout once the
// kernel has initialised the mount, and runs until SIGTERM/SIGINT (then unmounts, lazily if busy,
// and exits 0). A stale mount left by a killed daemon ("Transport endpoint is not connected") is
// detached first. `minivmm vdpa-sim` runs the same daemon in its own process (runDaemon).
import { Worker } from 'node:worker_threads';
import { mkdirSync, readFileSync, realpathSync, statSync, writeSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { close, eventfd, EFD_CLOEXEC, umount2, MNT_DETACH, write as sysWrite } from '../../src/libc.js';
import { mountFuse } from './fuse.js';
import { checkAslr, MEMLOCK_OVERRIDE_ENV } from './owner.js';
import { parseDeviceSpec, type DeviceSpec } from './spec.js';
import type { WorkerConfig } from './worker.js';

export const FSNAME = 'minivmm-vdpa';

export interface DaemonOptions { dir: string; devices: DeviceSpec[]; pinCostMsPerGib: number; memlockLimit?: string }

/** The daemon's arguments; throws a one-line Error on bad ones. */
export function parseDaemonArgs(argv: string[]): DaemonOptions {
  const { values } = parseArgs({
    args: argv, strict: true,
    // --device: the name older builds used (daemon arguments live on in CPR states)
    options: { dir: { type: 'string' }, dev: { type: 'string', multiple: true }, device: { type: 'string', multiple: true }, 'pin-cost-ms-per-gib': { type: 'string' }, 'memlock-limit': { type: 'string' } },
  });
  const pinCost = values['pin-cost-ms-per-gib'] ?? '0';
  if (!/^\d+(\.\d+)?$/.test(pinCost)) throw new Error(`bad --pin-cost-ms-per-gib ${pinCost}`);
  const memlock = values['memlock-limit'];
  if (memlock !== undefined && !/^\d+$/.test(memlock)) throw new Error(`bad --memlock-limit ${memlock} (bytes)`);
  if (!values.dir) throw new Error('--dir is required');
  const devices = [...values.dev ?? [], ...values.device ?? []].map((s) => parseDeviceSpec(s));
  if (!devices.length) throw new Error('at least one --dev is required');
  const names = new Set<string>();
  for (const d of devices) {
    if (names.has(d.name)) throw new Error(`duplicate device name ${d.name}`);
    names.add(d.name);
  }
  return { dir: resolve(values.dir), devices, pinCostMsPerGib: Number(pinCost), memlockLimit: memlock };
}

const mountLine = (dir: string): string | undefined => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === dir);

/** Detach a mount at dir left by a dead daemon; create dir if missing. Refuses to steal a live one. */
export function clearStaleMount(dir: string): void {
  try {
    statSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTCONN') { umount2(dir, MNT_DETACH); return; }
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') { mkdirSync(dir, { recursive: true }); return; }
    throw e;
  }
  if (mountLine(dir)?.includes(`fuse.${FSNAME}`)) throw new Error(`${dir} is already served by a live vdpa daemon`);
}

/** Whether a vdpa daemon's file system (live or dead) is mounted at dir. */
export const isDaemonMount = (dir: string): boolean => mountLine(dir)?.includes(`fuse.${FSNAME}`) ?? false;

function unmount(dir: string): void {
  try { umount2(dir, 0); } catch { // busy (a process still has a file open): detach it instead
    try { umount2(dir, MNT_DETACH); } catch { /* already gone */ }
  }
}

/**
 * Mounts and serves the devices until SIGTERM/SIGINT (or the mount goes away), then unmounts and
 * exits the process. `onReady` gets [name, node] per device once the mount is live.
 */
export function runDaemon(o: DaemonOptions, onReady: (nodes: [string, string][]) => void): void {
  checkAslr();
  clearStaleMount(o.dir);
  if (o.memlockLimit !== undefined) process.env[MEMLOCK_OVERRIDE_ENV] = o.memlockLimit; // owner.ts reads it, in the worker too
  const fuseFd = mountFuse(o.dir, FSNAME);
  const stopFd = eventfd(0, EFD_CLOEXEC);
  const cfg: WorkerConfig = { fuseFd, stopFd, dir: o.dir, devices: o.devices, pinCostMsPerGib: o.pinCostMsPerGib };
  const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: cfg });
  const logLine = (msg: string) => { try { writeSync(2, `${new Date().toISOString()} vdpa[${process.pid}] ${msg}\n`); } catch { /* no stderr */ } };
  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    logLine(`stopping (${why})`);
    unmount(o.dir);
    const one = Buffer.alloc(8); one.writeBigUInt64LE(1n);
    try { sysWrite('eventfd write', stopFd, one); } catch { /* worker gone */ }
    setTimeout(() => process.exit(0), 2000).unref();
  };
  worker.on('message', (m: { ready?: boolean; nodes?: [string, string][]; log?: string; stopped?: boolean; closeFd?: number }) => {
    if (m.closeFd !== undefined) { try { close(m.closeFd); } catch { /* ignore */ } }
    if (m.ready) {
      onReady(m.nodes ?? []);
      logLine(`ready: ${o.dir} (${(m.nodes ?? []).map(([name, node]) => `${name} ${node}`).join(', ')})`);
    }
    if (m.log) logLine(m.log);
    if (m.stopped) { if (!stopping) { stopping = true; unmount(o.dir); } process.exit(0); }
  });
  worker.on('error', (e) => { logLine(`worker failed: ${e.stack ?? e}`); unmount(o.dir); process.exit(1); });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => { /* survive the parent's terminal going away */ });
  process.on('SIGPIPE', () => { /* stdout may be a pipe whose reader exec'd */ });
}

function main(): void {
  try {
    runDaemon(parseDaemonArgs(process.argv.slice(2)), (nodes) => {
      try { writeSync(1, `${nodes.map(([name, node]) => `node ${name} ${node}\n`).join('')}ready\n`); } catch { /* parent gone */ }
    });
  } catch (e) {
    process.stderr.write(`vdpa daemon: ${(e as Error).message.split('\n')[0]}\n`);
    process.exit(2);
  }
}

const isEntry = (() => { try { return realpathSync(process.argv[1] ?? '') === realpathSync(fileURLToPath(import.meta.url)); } catch { return false; /* no such path: not run as the entry */ } })();
if (isEntry) main();
