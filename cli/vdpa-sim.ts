// `minivmm vdpa-sim` (run the embedded vhost-vdpa device daemon on its own) and `minivmm vdpa dev`
// (manage its devices with iproute2's `vdpa dev` verbs and output shape):
//
//   minivmm vdpa-sim --dir DIR [--daemon] [--log FILE] --dev NAME:net|blk[,va|pa][,no-new-owner][,backing=FILE]...
//   minivmm vdpa-sim stop --dir DIR
//   minivmm vdpa [-j] [-p] dev show [NAME] --dir DIR
//   minivmm vdpa dev add --dir DIR name NAME mgmtdev vdpasim_net|vdpasim_blk [mac MAC] [dma va|pa] [model no-new-owner] [backing FILE]
//   minivmm vdpa dev del --dir DIR NAME
//
// The daemon serves DIR/vhost-vdpa-N (N as the kernel numbers its nodes) plus `status` and
// `control` files (devices/vdpa/manage.ts). As on Linux 6.12, `dev del` of a device whose file is
// open removes the node at once and returns when the file is closed; `dev add` and `dev show`
// meanwhile wait for it.
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { umount2, MNT_DETACH } from '../src/libc.js';
import { parse, UsageError } from '../vmm/config.js';
import { DeviceSpecError, MGMTDEV, parseDeviceSpec, formatDeviceSpec, type DeviceSpec } from '../devices/vdpa/spec.js';
import type { DaemonStatus, DeviceStatus } from '../devices/vdpa/launch.js';

const SIM_USAGE = 'usage: minivmm vdpa-sim --dir DIR [--daemon] [--log FILE] --dev NAME:net|blk[,va|pa][,no-new-owner][,backing=FILE]... | minivmm vdpa-sim stop --dir DIR';
const DEV_USAGE = 'usage: minivmm vdpa [-j] [-p] dev show [NAME] --dir DIR | dev add --dir DIR name NAME mgmtdev vdpasim_net|vdpasim_blk [mac MAC] [dma va|pa] [model no-new-owner] [backing FILE] | dev del --dir DIR NAME';

/** The daemon's directory: a vdpa daemon mount (live) or an error naming what is there. */
async function daemonDir(dir: string): Promise<string> {
  const { isDaemonMount } = await import('../devices/vdpa/daemon-main.js');
  const abs = resolve(dir);
  if (!isDaemonMount(abs)) throw new Error(`${abs}: no vdpa-sim daemon there (start one with minivmm vdpa-sim --dir ${dir} --dev NAME:net)`);
  try { statSync(join(abs, 'status')); } catch (e) {
    throw new Error(`${abs}: the vdpa-sim daemon is gone (${(e as NodeJS.ErrnoException).code}); minivmm vdpa-sim stop --dir ${dir} cleans up`);
  }
  return abs;
}

const readStatus = (dir: string): DaemonStatus => JSON.parse(readFileSync(join(dir, 'status'), 'utf8')) as DaemonStatus;

export async function cmdVdpaSim(args: string[]): Promise<void> {
  if (args[0] === 'stop') return stopSim(args.slice(1));
  const { values, positionals } = parse(args, {
    dir: { type: 'string' }, daemon: { type: 'boolean', default: false }, dev: { type: 'string', multiple: true }, log: { type: 'string' },
  }, true);
  if (positionals.length) throw new UsageError(`vdpa-sim: unexpected '${positionals[0]}' (${SIM_USAGE})`);
  if (!values.dir) throw new UsageError(`vdpa-sim: --dir DIR is required (${SIM_USAGE})`);
  const specs = (values.dev ?? []) as string[];
  if (!specs.length) throw new UsageError(`vdpa-sim: at least one --dev NAME:net|blk is required (${SIM_USAGE})`);
  if (values.log && !values.daemon) throw new UsageError('vdpa-sim: --log goes with --daemon (in the foreground the log is stderr)');
  let devices: DeviceSpec[];
  try { devices = specs.map((s) => parseDeviceSpec(s)); } catch (e) {
    if (e instanceof DeviceSpecError) throw new UsageError(`vdpa-sim: --dev ${e.message}`);
    throw e;
  }
  const dup = devices.find((d, i) => devices.findIndex((x) => x.name === d.name) !== i);
  if (dup) throw new UsageError(`vdpa-sim: device name ${dup.name} given twice`);
  const dir = resolve(values.dir as string);
  const show = (nodes: [string, string][]) => process.stdout.write(nodes.map(([name, node]) => `${name} -> ${join(dir, node)}\n`).join(''));
  if (values.daemon) {
    const { daemonArgs, defaultDaemonLog, spawnVdpaDaemon } = await import('../devices/vdpa/launch.js');
    const log = values.log ? resolve(values.log as string) : defaultDaemonLog(dir);
    const { pid, nodes } = await spawnVdpaDaemon(dir, daemonArgs({ dir, devices }), log);
    show(devices.map((d) => [d.name, nodes.get(d.name)!]));
    process.stdout.write(`vdpa-sim: pid ${pid}, log ${log}\n`);
    return;
  }
  const { runDaemon } = await import('../devices/vdpa/daemon-main.js');
  runDaemon({ dir, devices, pinCostMsPerGib: 0 }, show); // serves until SIGTERM/SIGINT, then exits
}

async function stopSim(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, { dir: { type: 'string' } }, true);
  if (!values.dir || positionals.length) throw new UsageError('usage: minivmm vdpa-sim stop --dir DIR');
  const dir = resolve(values.dir as string);
  const { isDaemonMount } = await import('../devices/vdpa/daemon-main.js');
  if (!isDaemonMount(dir)) throw new Error(`${dir}: no vdpa-sim daemon there`);
  let pid: number | undefined;
  try { pid = readStatus(dir).pid; } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOTCONN') throw e;
  }
  if (pid === undefined) { // killed: only its mount is left
    umount2(dir, MNT_DETACH);
    process.stdout.write(`vdpa-sim: the daemon at ${dir} was gone; its stale mount is removed\n`);
    return;
  }
  const { stopVdpaDaemon } = await import('../devices/vdpa/launch.js');
  await stopVdpaDaemon(pid, dir);
}

export async function cmdVdpa(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, {
    dir: { type: 'string' }, json: { type: 'boolean', short: 'j', default: false }, pretty: { type: 'boolean', short: 'p', default: false },
  }, true);
  const dirArg = values.dir as string | undefined;
  const [object, verb = 'show', ...rest] = positionals;
  if (object !== 'dev') throw new UsageError(`vdpa: object '${object ?? ''}' not supported (dev only; ${DEV_USAGE})`);
  if (!dirArg) throw new UsageError(`vdpa dev ${verb}: --dir DIR is required (the vdpa-sim directory)`);
  if (verb === 'show' || verb === 'list') {
    if (rest.length > 1) throw new UsageError(`vdpa dev show: one device at most (${DEV_USAGE})`);
    const dir = await daemonDir(dirArg);
    control(dir, 'wait', ''); // after a pending del, as the kernel's show waits for it
    return showDevices(readStatus(dir), rest[0], values.json as boolean, values.pretty as boolean);
  }
  if (verb === 'add') return addDevice(dirArg, rest);
  if (verb === 'del') {
    if (rest.length !== 1) throw new UsageError('usage: minivmm vdpa dev del --dir DIR NAME');
    return control(await daemonDir(dirArg), `del ${rest[0]}`, rest[0]);
  }
  throw new UsageError(`vdpa dev: unknown command '${verb}' (show, add, del)`);
}

const ADD_KEYS = ['name', 'mgmtdev', 'mac', 'dma', 'model', 'backing'] as const;

async function addDevice(dirArg: string, words: string[]): Promise<void> {
  const kv = new Map<string, string>();
  for (let i = 0; i < words.length; i += 2) {
    const [k, v] = [words[i], words[i + 1]];
    if (!(ADD_KEYS as readonly string[]).includes(k)) throw new UsageError(`vdpa dev add: unknown attribute '${k}' (${ADD_KEYS.join(', ')})`);
    if (v === undefined) throw new UsageError(`vdpa dev add: ${k} needs a value`);
    kv.set(k, v);
  }
  const name = kv.get('name'), mgmt = kv.get('mgmtdev');
  if (!name || !mgmt) throw new UsageError('vdpa dev add: name NAME and mgmtdev MGMTDEV are required');
  const type = (Object.keys(MGMTDEV) as ('net' | 'blk')[]).find((t) => MGMTDEV[t] === mgmt);
  if (!type) throw new UsageError(`vdpa dev add: mgmtdev ${mgmt}: not a management device here (${Object.values(MGMTDEV).join(', ')})`);
  const opts = [type, kv.get('dma') ?? 'va', ...(kv.has('model') && kv.get('model') !== 'patched' ? [kv.get('model')!] : [])];
  if (kv.has('mac')) opts.push(`mac=${kv.get('mac')}`);
  if (kv.has('backing')) opts.push(`backing=${kv.get('backing')}`);
  let spec: DeviceSpec;
  try { spec = parseDeviceSpec(`${name}:${opts.join(',')}`); } catch (e) {
    if (e instanceof DeviceSpecError) throw new UsageError(`vdpa dev add: ${e.message}`);
    throw e;
  }
  return control(await daemonDir(dirArg), `add ${formatDeviceSpec(spec)}`, name);
}

/** One command through the daemon's control file; its errno as the kernel's vdpa netlink gives it. */
function control(dir: string, line: string, name: string): void {
  try { writeFileSync(join(dir, 'control'), `${line}\n`); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'EEXIST' ? `device ${name} exists` : code === 'ENODEV' ? `device ${name} not found` : code === 'EINTR' ? 'interrupted (the device goes once its file is closed)' : (e as Error).message;
    throw new Error(`vdpa dev ${line.split(' ')[0]}: ${why} (${code})`);
  }
}

const hex = (v: number | string) => (typeof v === 'string' ? v : `0x${v.toString(16)}`);
const PERMS = ['none', 'ro', 'wo', 'rw'];

/** iproute2's `vdpa dev show` line and JSON object, plus what the kernel shows only in debugfs. */
function showDevices(st: DaemonStatus, only: string | undefined, json: boolean, pretty: boolean): void {
  const devs = st.devices.filter((d) => !d.deleting && (only === undefined || d.name === only));
  if (only !== undefined && !devs.length) throw new Error(`vdpa dev show: device ${only} not found (ENODEV)`);
  const pins = (d: DeviceStatus) => d.pinnedPages;
  if (json) {
    const dev = Object.fromEntries(devs.map((d) => [d.name, {
      type: d.type === 'net' ? 'network' : 'block', mgmtdev: d.mgmtdev, vendor_id: d.vendorId, max_vqs: d.maxVqs, max_vq_size: d.maxVqSize,
      node: d.node, dma: d.dma, model: d.model, owner: d.owner, status: d.status, features: d.features, backend_features: d.backendFeatures,
      vqs: d.vqs.map((q, index) => ({ index, ...q })),
      iotlb: d.addressSpaces.flatMap((as) => as.entries.map((e) => ({ asid: as.asid, iova: e.iova, size: e.size, perm: PERMS[e.perm] ?? e.perm, addr: e.addr }))),
      pinned_pages: pins(d),
    }]));
    process.stdout.write(`${JSON.stringify({ dev }, null, pretty ? 2 : undefined)}\n`);
    return;
  }
  const out: string[] = [];
  for (const d of devs) {
    out.push(`${d.name}: type ${d.type === 'net' ? 'network' : 'block'} mgmtdev ${d.mgmtdev} vendor_id ${d.vendorId} max_vqs ${d.maxVqs} max_vq_size ${d.maxVqSize}`);
    out.push(`  node ${d.node} dma ${d.dma} model ${d.model} owner ${d.owner ? `pid ${d.owner.pid}` : 'none'} status ${hex(d.status)} features ${d.features} backend_features ${d.backendFeatures} pinned_pages ${pins(d)}`);
    d.vqs.forEach((q, i) => out.push(`  vq ${i}: num ${q.num} enabled ${q.enabled} last_avail ${q.last_avail} used_idx ${q.used_idx}`));
    for (const as of d.addressSpaces) for (const e of as.entries) out.push(`  iotlb asid ${as.asid}: iova ${e.iova} size ${e.size} perm ${PERMS[e.perm] ?? e.perm} addr ${e.addr}`);
  }
  if (out.length) process.stdout.write(`${out.join('\n')}\n`);
}
