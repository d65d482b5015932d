// The daemon's event loop, run in a worker thread so that the main thread stays free for signals:
// one epoll set with /dev/fuse, a control eventfd (stop) and every kick eventfd (edge-triggered
// and never read, like vhost's poll on the kick file). FUSE requests and device work are served
// one at a time, as the kernel's device lock would serialise them.
import { parentPort, workerData } from 'node:worker_threads';
import { constants } from 'node:os';
import { epollCreate, epollDel, epollWait, epollAddFlags, EPOLLIN, EPOLLET } from './sys.js';
import { FuseServer, ROOT, type FuseFile, type FuseFs, type IoctlIn } from './fuse.js';
import { Errno, VdpaDevice, FAULT_OPS, type DeviceHost, type FaultOp, type Fault } from './device.js';
import { PinLedger } from './iotlb.js';
import { DeviceTable } from './manage.js';
import { errnoName } from '../../src/libc.js';
import type { DeviceSpec } from './spec.js';

const E = constants.errno;
export interface WorkerConfig { fuseFd: number; stopFd: number; dir: string; devices: DeviceSpec[]; pinCostMsPerGib: number }
const cfg = workerData as WorkerConfig;

const log = (msg: string) => parentPort!.postMessage({ log: msg });
const TOKEN_FUSE = 1, TOKEN_STOP = 2, TOKEN_KICK = 1000;

const epfd = epollCreate();
epollAddFlags(epfd, cfg.fuseFd, TOKEN_FUSE, EPOLLIN);
epollAddFlags(epfd, cfg.stopFd, TOKEN_STOP, EPOLLIN);

const ledger = new PinLedger();
const kickTokens = new Map<number, { dev: VdpaDevice; vq: number }>();
const kickFds = new Map<number, number>();
const host: DeviceHost = {
  ledger,
  pinCostMsPerGib: cfg.pinCostMsPerGib,
  log,
  closeElsewhere: (fd) => parentPort!.postMessage({ closeFd: fd }),
  watchKick(dev, vq, fd) {
    const token = TOKEN_KICK + dev.ino * 64 + vq;
    const cur = kickFds.get(token);
    if (cur !== undefined) { epollDel(epfd, cur); kickFds.delete(token); kickTokens.delete(token); }
    if (fd !== null) {
      kickFds.set(token, fd); kickTokens.set(token, { dev, vq });
      epollAddFlags(epfd, fd, token, EPOLLIN | EPOLLET);
    }
  },
};
const table = new DeviceTable((spec, node, ino) => new VdpaDevice(spec, host, node, ino), log);
for (const spec of cfg.devices) table.add(spec);

// inodes: root 1, then the fixed files; devices from 16 on (manage.ts)
const STATUS_INO = 2, FAULTS_INO = 3, CONTROL_INO = 4;
const fixedFiles: FuseFile[] = [
  { name: 'status', ino: STATUS_INO, mode: 0o444 },
  { name: 'faults', ino: FAULTS_INO, mode: 0o600 },
  { name: 'control', ino: CONTROL_INO, mode: 0o600 },
];

/**
 * The `faults` file arms fault injection (see FAULT_OPS in device.ts), one line per fault:
 * `DEVICE OP ERRNO|delay:MS [TIMES]` (TIMES default 1), or `DEVICE OP off`; DEVICE is the device's
 * name or node. A bad line fails the write with EINVAL and arms nothing.
 */
function armFaults(text: string): void {
  const armed: [VdpaDevice, FaultOp, Fault | null][] = [];
  for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const [name, op, errno, times = '1', ...rest] = line.split(/\s+/);
    const d = table.listed.find((x) => x.spec.name === name || x.node === name);
    const ok = d && (FAULT_OPS as readonly string[]).includes(op) && !rest.length &&
      (errno === 'off' || ((/^E[A-Z0-9]+$/.test(errno ?? '') && errno in E) || /^delay:[1-9]\d{0,4}$/.test(errno ?? '')) && /^[1-9]\d{0,6}$/.test(times));
    if (!ok) { log(`faults: bad line '${line.slice(0, 80)}'`); throw new Errno(E.EINVAL); }
    const fault: Fault = errno.startsWith('delay:') ? { delayMs: Number(errno.slice(6)), times: Number(times) } : { errno: errno as Fault['errno'], times: Number(times) };
    armed.push([d!, op as FaultOp, errno === 'off' ? null : fault]);
  }
  for (const [d, op, f] of armed) { if (f) d.faults.set(op, f); else d.faults.delete(op); }
}
const statusSnapshots = new Map<number, Buffer>();
let statusFh = 0;

function statusJson(): object {
  return {
    pid: process.pid, dir: cfg.dir, pinCostMsPerGib: cfg.pinCostMsPerGib,
    fuse: server.counters,
    control: table.waiting,
    vmPin: ledger.all(),
    devices: table.devices.map((d) => d.status()),
  };
}

const devOf = (ino: number): VdpaDevice => {
  const d = table.byIno(ino);
  if (!d) throw new Errno(E.ENOENT);
  return d;
};

const fs: FuseFs = {
  files: () => [...table.listed.map((d) => ({ name: d.node, ino: d.ino, mode: 0o600 })), ...fixedFiles],
  log,
  initialized: () => parentPort!.postMessage({ ready: true, nodes: table.listed.map((d) => [d.spec.name, d.node]) }),
  open(ino, _flags, _tid) {
    if (ino === STATUS_INO) {
      statusFh++;
      statusSnapshots.set(statusFh, Buffer.from(`${JSON.stringify(statusJson(), null, 1)}\n`));
      return statusFh;
    }
    if (ino === ROOT) throw new Errno(E.EISDIR);
    if (ino === FAULTS_INO || ino === CONTROL_INO) return 0;
    const d = devOf(ino);
    if (d.deleting) throw new Errno(E.ENOENT); // its node is gone
    return d.open();
  },
  read(ino, fh, offset, size, flags) {
    if (ino === STATUS_INO) {
      const s = statusSnapshots.get(fh) ?? Buffer.alloc(0);
      return s.subarray(offset, offset + size);
    }
    if (ino === FAULTS_INO) {
      const armed = Object.fromEntries(table.listed.map((d) => [d.spec.name, Object.fromEntries(d.faults)]));
      return Buffer.from(`${JSON.stringify(armed)}\n`).subarray(offset, offset + size);
    }
    if (ino === CONTROL_INO) return Buffer.alloc(0);
    devOf(ino);
    // vhost_chr_read_iter: IOTLB miss messages; vdpa produces none.
    if (flags & 0o4000 /* O_NONBLOCK */) throw new Errno(E.EAGAIN);
    return 'park';
  },
  write(ino, fh, data, tid, later) {
    if (ino === STATUS_INO) throw new Errno(E.EBADF);
    if (ino === FAULTS_INO) { armFaults(data.toString('utf8')); return data.length; }
    if (ino === CONTROL_INO) {
      const reply = later();
      table.control(data.toString('utf8'), (e) => reply(e ?? data.length));
      return 'park';
    }
    const d = devOf(ino);
    if (fh !== d.fh || !d.opened) throw new Errno(E.EBADF);
    return count(d, () => d.write(tid, data));
  },
  ioctl(ino, fh, req: IoctlIn) {
    if (ino === STATUS_INO || ino === FAULTS_INO || ino === CONTROL_INO) throw new Errno(E.ENOTTY);
    const d = devOf(ino);
    if (fh !== d.fh || !d.opened) throw new Errno(E.EBADF);
    return count(d, () => d.ioctl(req));
  },
  release(ino, fh) {
    if (ino === STATUS_INO) { statusSnapshots.delete(fh); return; }
    if (ino === FAULTS_INO || ino === CONTROL_INO) return;
    const d = devOf(ino);
    if (fh !== d.fh) return;
    d.release();
    table.released(d);
  },
};

function count<T>(d: VdpaDevice, f: () => T): T {
  try {
    return f();
  } catch (e) {
    d.counters.errors++;
    const name = e instanceof Errno ? errnoName(e.errno) : 'EIO';
    d.counters.errnos[name] = (d.counters.errnos[name] ?? 0) + 1;
    throw e;
  }
}

const server = new FuseServer(cfg.fuseFd, fs);

function runDevices(): boolean {
  let again = false;
  for (const d of table.devices) {
    if (d.sim.workPending) {
      if (d.sim.run()) { d.sim.workPending = true; again = true; }
    }
  }
  return again;
}

let more = false, fuseMore = true;
for (;;) {
  const tokens = epollWait(epfd, more ? 0 : -1);
  let stop = false, fuseReady: boolean = fuseMore;
  for (const t of tokens) {
    if (t === TOKEN_STOP) stop = true;
    else if (t === TOKEN_FUSE) fuseReady = true;
    else {
      const k = kickTokens.get(t);
      if (k) k.dev.kick(k.vq);
    }
  }
  if (stop) break;
  const s: string = fuseReady ? server.serve() : "idle";
  if (s === 'gone') { log('fuse connection gone'); break; }
  fuseMore = s === 'more';
  more = runDevices() || fuseMore || table.devices.some((d) => d.sim.workPending);
}
parentPort!.postMessage({ stopped: true });
