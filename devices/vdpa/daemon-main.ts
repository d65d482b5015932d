// Entry point of the embedded vhost-vdpa device daemon:
//   node dist/devices/vdpa/daemon-main.js --dir DIR
//        --device NAME=TYPE,DMA[,no-new-owner][,remapLagsOutsideBatch][,newOwnerRlimitBeforeBusy][,backing=/FILE] [--device ...]
//        [--pin-cost-ms-per-gib N] [--memlock-limit BYTES]
// TYPE is net or blk, DMA is va or pa. Mounts a FUSE file system at DIR with one file per device,
// a read-only `status` file and a root-only `faults` file (fault injection, see worker.ts), prints
// `ready` on stdout once the kernel has initialised the mount, and runs until SIGTERM/SIGINT (then
// unmounts, lazily if busy, and exits 0). A stale mount left by a killed daemon ("Transport
// endpoint is not connected") is detached first.
import { Worker } from 'node:worker_threads';
import { mkdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { close, eventfd, EFD_CLOEXEC, umount2, MNT_DETACH, write as sysWrite } from '../../src/libc.js';
import { mountFuse } from './fuse.js';
import { checkAslr, MEMLOCK_OVERRIDE_ENV } from './owner.js';
import type { DeviceSpec } from './device.js';
import type { WorkerConfig } from './worker.js';

const FSNAME = 'minivmm-vdpa';

export function parseArgs(argv: string[]): { dir: string; devices: DeviceSpec[]; pinCostMsPerGib: number } {
  let dir = '', pinCostMsPerGib = 0;
  const devices: DeviceSpec[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = argv[i + 1];
    if (a === '--dir' && v) { dir = v; i++; }
    else if (a === '--pin-cost-ms-per-gib' && v) { pinCostMsPerGib = Number(v); i++; if (!(pinCostMsPerGib >= 0)) throw new Error(`bad --pin-cost-ms-per-gib ${v}`); }
    else if (a === '--device' && v) { devices.push(parseDevice(v)); i++; }
    else if (a === '--memlock-limit' && v) {
      if (!/^\d+$/.test(v)) throw new Error(`bad --memlock-limit ${v} (bytes)`);
      process.env[MEMLOCK_OVERRIDE_ENV] = v; // read by owner.ts, in the worker too (it inherits the env)
      i++;
    }
    else throw new Error(`unknown or incomplete argument ${a}`);
  }
  if (!dir) throw new Error('--dir is required');
  if (!devices.length) throw new Error('at least one --device is required');
  const names = new Set<string>();
  for (const d of devices) {
    if (d.name === 'status' || d.name === 'faults' || names.has(d.name)) throw new Error(`duplicate or reserved device name ${d.name}`);
    names.add(d.name);
  }
  return { dir, devices, pinCostMsPerGib };
}

function parseDevice(s: string): DeviceSpec {
  const m = /^([A-Za-z0-9_.-]+)=(net|blk),(va|pa)((?:,[A-Za-z-]+(?:=\/[^,]+)?)*)$/.exec(s);
  if (!m) throw new Error(`bad --device ${s} (want NAME=net|blk,va|pa[,no-new-owner][,remapLagsOutsideBatch][,newOwnerRlimitBeforeBusy][,backing=/FILE])`);
  const d: DeviceSpec = { name: m[1], type: m[2] as 'net' | 'blk', dma: m[3] as 'va' | 'pa', quirks: {} };
  for (const opt of m[4].split(',').filter(Boolean)) {
    if (opt === 'no-new-owner') d.model = 'no-new-owner';
    else if (opt === 'remapLagsOutsideBatch') d.quirks!.remapLagsOutsideBatch = true;
    else if (opt === 'newOwnerRlimitBeforeBusy') d.quirks!.newOwnerRlimitBeforeBusy = true;
    else if (opt.startsWith('backing=/') && d.type === 'blk') d.backing = opt.slice(8);
    else throw new Error(`unknown device option ${opt}`);
  }
  return d;
}

/** Detach a mount at dir left by a dead daemon. Refuses to steal a live one. */
function clearStaleMount(dir: string): void {
  const mounted = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir);
  try {
    statSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTCONN') { umount2(dir, MNT_DETACH); return; }
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') { mkdirSync(dir, { recursive: true }); return; }
    throw e;
  }
  if (mounted) {
    const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === dir) ?? '';
    if (line.includes(`fuse.${FSNAME}`)) throw new Error(`${dir} is already served by a live vdpa daemon`);
  }
}

function unmount(dir: string): void {
  try { umount2(dir, 0); } catch {
    try { umount2(dir, MNT_DETACH); } catch { /* already gone */ }
  }
}

function main(): void {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
    checkAslr();
    clearStaleMount(args.dir);
  } catch (e) {
    process.stderr.write(`vdpa daemon: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const { dir, devices, pinCostMsPerGib } = args;
  const fuseFd = mountFuse(dir, FSNAME);
  const stopFd = eventfd(0, EFD_CLOEXEC);
  const cfg: WorkerConfig = { fuseFd, stopFd, dir, devices, pinCostMsPerGib };
  const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: cfg });
  const logLine = (msg: string) => { try { writeSync(2, `${new Date().toISOString()} vdpa[${process.pid}] ${msg}\n`); } catch { /* no stderr */ } };
  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    logLine(`stopping (${why})`);
    unmount(dir);
    const one = Buffer.alloc(8); one.writeBigUInt64LE(1n);
    try { sysWrite('eventfd write', stopFd, one); } catch { /* worker gone */ }
    setTimeout(() => process.exit(0), 2000).unref();
  };
  worker.on('message', (m: { ready?: boolean; log?: string; stopped?: boolean; closeFd?: number }) => {
    if (m.closeFd !== undefined) { try { close(m.closeFd); } catch { /* ignore */ } }
    if (m.ready) {
      try { writeSync(1, 'ready\n'); } catch { /* parent gone */ }
      logLine(`ready: ${dir} (${devices.map((d) => `${d.name}=${d.type},${d.dma}`).join(' ')})`);
    }
    if (m.log) logLine(m.log);
    if (m.stopped) { if (!stopping) { stopping = true; unmount(dir); } process.exit(0); }
  });
  worker.on('error', (e) => { logLine(`worker failed: ${e.stack ?? e}`); unmount(dir); process.exit(1); });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => { /* survive the parent's terminal going away */ });
  process.on('SIGPIPE', () => { /* stdout may be a pipe whose reader exec'd */ });
}

main();
