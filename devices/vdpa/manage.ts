// The daemon's device table, managed as the kernel's vdpa bus is by `vdpa dev add|del` (netlink):
// - add: a device named NAME and its node vhost-vdpa-N, N the lowest free number (the kernel's
//   IDA); a name in use is EEXIST.
// - del: the node goes at once (cdev_device_del); if the device's file is open, the command waits
//   until it is closed (vhost_vdpa_remove waits for the last release; the open fd keeps working
//   meanwhile), and holds up every later add/del until then (vdpa_dev_lock). An unknown name is
//   ENODEV.
// - wait: nothing, once the commands before it have completed: `vdpa dev show` goes through it
//   first, as the kernel's waits for vdpa_dev_lock.
// Commands arrive as lines written to the root-only `control` file: `add SPEC` (spec.ts grammar),
// `del NAME` or `wait`; the write() returns when the command has completed, or fails with its errno.
import { constants } from 'node:os';
import { Errno, VdpaDevice } from './device.js';
import { parseDeviceSpec, type DeviceSpec } from './spec.js';

const E = constants.errno;
/** Inodes below this belong to the fixed files (root, status, faults, control). */
const FIRST_DEVICE_INO = 16;

type Done = (result: Errno | null) => void;

export class DeviceTable {
  private readonly all: VdpaDevice[] = [];
  private nextIno = FIRST_DEVICE_INO;
  /** Commands waiting for the table (a del waiting for its device's release holds it). */
  private readonly queue: { line: string; done: Done }[] = [];
  private pendingDel: { dev: VdpaDevice; done: Done } | null = null;

  constructor(private readonly make: (spec: DeviceSpec, node: string, ino: number) => VdpaDevice, private readonly log: (m: string) => void) {}

  /** Devices with a node (a device being deleted has none, but its open file still works). */
  get listed(): VdpaDevice[] { return this.all.filter((d) => !d.deleting); }
  /** Every device that still exists, deleted-but-open ones included. */
  get devices(): readonly VdpaDevice[] { return this.all; }
  /** Commands held up by a pending del (status: what `vdpa dev` callers are waiting on). */
  get waiting(): { commands: number; del: string | null } { return { commands: this.queue.length, del: this.pendingDel?.dev.spec.name ?? null }; }
  byIno(ino: number): VdpaDevice | undefined { return this.all.find((d) => d.ino === ino); }
  byName(name: string): VdpaDevice | undefined { return this.listed.find((d) => d.spec.name === name); }

  add(spec: DeviceSpec): VdpaDevice {
    if (this.all.some((d) => d.spec.name === spec.name)) throw new Errno(E.EEXIST, `device ${spec.name} exists`);
    const used = new Set(this.all.map((d) => d.node));
    let n = 0;
    while (used.has(`vhost-vdpa-${n}`)) n++;
    const dev = this.make(spec, `vhost-vdpa-${n}`, this.nextIno++);
    this.all.push(dev);
    return dev;
  }

  /** A line written to the control file; `done` answers the write. */
  control(text: string, done: Done): void {
    this.queue.push({ line: text.trim(), done });
    this.runQueue();
  }

  /** The device's file was released: a pending del completes. */
  released(dev: VdpaDevice): void {
    if (this.pendingDel?.dev !== dev) return;
    const { done } = this.pendingDel;
    this.pendingDel = null;
    this.remove(dev);
    done(null);
    this.runQueue();
  }

  private runQueue(): void {
    while (!this.pendingDel && this.queue.length) {
      const { line, done } = this.queue.shift()!;
      try {
        if (this.command(line, done)) done(null);
      } catch (e) {
        this.log(`control: '${line.slice(0, 120)}': ${(e as Error).message}`);
        done(e instanceof Errno ? e : new Errno(E.EINVAL, (e as Error).message));
      }
    }
  }

  /** Runs one command; false when it completes later (a del of an open device). */
  private command(line: string, done: Done): boolean {
    const [verb, arg, ...rest] = line.split(/\s+/);
    if (verb === 'wait' && !arg) return true;
    if (verb === 'add' && arg && !rest.length) {
      const dev = this.add(parseDeviceSpec(arg));
      this.log(`added ${dev.spec.name} as ${dev.node}`);
      return true;
    }
    if (verb === 'del' && arg && !rest.length) {
      const dev = this.byName(arg);
      if (!dev) throw new Errno(E.ENODEV, `device ${arg} not found`);
      dev.deleting = true; // the node goes now
      if (!dev.opened) { this.remove(dev); return true; }
      this.log(`del ${arg}: ${dev.node} is open; waiting for its release`);
      this.pendingDel = { dev, done };
      return false;
    }
    throw new Errno(E.EINVAL, 'want: add SPEC | del NAME | wait');
  }

  private remove(dev: VdpaDevice): void {
    this.all.splice(this.all.indexOf(dev), 1);
    dev.destroy();
    this.log(`deleted ${dev.spec.name} (${dev.node})`);
  }
}
