// What the device says about itself (docs/vhost-vdpa-live-update.md §7.1): device id, virtio and backend features, queue counts,
// IOVA range, whether it carries the live-update series, and VA vs PA mode.
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import * as libc from '../../src/libc.js';
import { vhost, IOTLB, BACKEND_F } from '../../src/vhost.js';
import { PinSource, readPins, statusFilePins } from './agent.js';
import type { Kind } from './virtq.js';

export interface DeviceInfo {
  path: string;
  id: number;
  kind: Kind | null;
  features: bigint;
  backend: bigint;
  vqs: number;
  nas: number;
  vringMax: number;
  configSize: number;
  iova: { first: bigint; last: bigint };
  newOwner: boolean; // bit 9 advertised
  remap: boolean; // bit 10 advertised
  /** The series is present: bit 9 advertised, or SET_BACKEND_FEATURES accepts it unadvertised (Q5). */
  series: boolean;
  mode: 'va' | 'pa' | null;
  modeHow: string;
  pins: PinSource;
  fuse: boolean;
  /** Base IOVA for the suite's entries, 2 MiB aligned, inside the range. */
  base: bigint;
}

/** The FUSE mount holding `path`, if any (from /proc/self/mountinfo). */
function fuseMountOf(path: string): string | null {
  let best: { mp: string; fs: string } | null = null;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const parts = line.split(' '), dash = parts.indexOf('-');
    if (dash < 0) continue;
    const mp = parts[4].replace(/\\040/g, ' '), fs = parts[dash + 1];
    if ((path === mp || path.startsWith(mp === '/' ? '/' : `${mp}/`)) && (!best || mp.length > best.mp.length)) best = { mp, fs };
  }
  return best && best.fs.startsWith('fuse') ? best.mp : null;
}

/** The embedded daemon's mode for this device if its status file states one (never for real kernels). */
function statusFileMode(statusPath: string, device: string): 'va' | 'pa' | null {
  try {
    const j = JSON.parse(readFileSync(statusPath, 'utf8'));
    const name = basename(device);
    const devs = j.devices ?? j;
    const d = Array.isArray(devs) ? devs.find((x: { node?: string }) => x.node === name) : undefined;
    const m = d?.dma ?? d?.mode;
    return m === 'va' || m === 'pa' ? m : null;
  } catch { return null; }
}

const M2 = 2n << 20n;

export function probe(path: string): DeviceInfo {
  const real = realpathSync(path);
  const fd = libc.open(real, libc.O_RDWR | libc.O_CLOEXEC);
  try {
    const id = vhost.getDeviceId(fd);
    const backend = vhost.getBackendFeatures(fd);
    const iova = vhost.getIovaRange(fd);
    const info: DeviceInfo = {
      path: real, id, kind: id === 1 ? 'net' : id === 2 ? 'blk' : null,
      features: vhost.getFeatures(fd), backend, vqs: vhost.getVqsCount(fd), nas: vhost.getAsNum(fd),
      vringMax: vhost.getVringNum(fd), configSize: vhost.getConfigSize(fd), iova,
      newOwner: (backend & BACKEND_F.NEW_OWNER) !== 0n, remap: (backend & BACKEND_F.IOTLB_REMAP) !== 0n,
      series: false, mode: null, modeHow: '', pins: { kind: 'none' }, fuse: false, base: 0n,
    };
    info.series = info.newOwner;
    if (!info.series) {
      try { vhost.setBackendFeatures(fd, 0x6n | BACKEND_F.NEW_OWNER); info.series = true; } catch { /* upstream: EOPNOTSUPP */ }
    }
    // entries go at a 2 MiB aligned base 1 GiB into the range (or at its start when it is small)
    let base = ((iova.first + M2 - 1n) / M2) * M2 + (1n << 30n);
    if (base + (1n << 28n) > iova.last) base = ((iova.first + M2 - 1n) / M2) * M2;
    info.base = base;

    const mount = fuseMountOf(real);
    info.fuse = mount !== null;
    const statusPath = join(dirname(real), 'status');
    if (info.fuse) {
      info.pins = existsSync(statusPath) && statusFilePins(statusPath, process.pid) !== null
        ? { kind: 'status', path: statusPath } : { kind: 'none' };
    } else {
      info.pins = readPins({ kind: 'proc' }, process.pid) !== null ? { kind: 'proc' } : { kind: 'none' };
    }
    if (info.remap) { info.mode = 'va'; info.modeHow = 'bit 10 advertised'; }
    else if (info.pins.kind !== 'none') {
      // §7.1: a one-page UPDATE that raises the pinned count means PA
      const mfd = libc.memfdCreate('conformance-probe', libc.MFD_CLOEXEC);
      libc.ftruncate(mfd, 4096);
      const addr = libc.mmap(4096, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, mfd, 0);
      try {
        vhost.setOwner(fd);
        const before = readPins(info.pins, process.pid) ?? 0;
        vhost.iotlb(fd, { type: IOTLB.UPDATE, iova: base, size: 4096n, uaddr: BigInt(addr), perm: 3 });
        const after = readPins(info.pins, process.pid) ?? 0;
        info.mode = after > before ? 'pa' : 'va';
        info.modeHow = `one-page UPDATE: pinned ${before} -> ${after} KiB (${info.pins.kind === 'proc' ? 'VmPin' : 'daemon status file'})`;
      } catch (e) {
        info.modeHow = `mode probe failed: ${(e as Error).message}`;
      } finally { libc.munmap(addr, 4096); libc.close(mfd); }
    } else if (info.fuse && existsSync(statusPath)) {
      info.mode = statusFileMode(statusPath, real);
      info.modeHow = info.mode ? 'daemon status file' : 'undetermined (no pinned-page figure)';
    } else info.modeHow = 'undetermined (no VmPin, no bit 10)';
    return info;
  } finally { libc.close(fd); }
}
