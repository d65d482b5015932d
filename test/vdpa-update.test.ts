// vhost-vdpa devices in guests, kept across cpr-exec: NEW_OWNER + REMAP, the fallback, failures.
import { afterEach, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { describeWith } from './facility.js';
import { VmProcess, tempDir, within } from './harness.js';
import { daemonLogged } from './vdpa-helpers.js';
import { runUpdate } from '../vmm/update.js';
import { parseStats } from '../tools/stats.js';
import { injectVdpaFault, readDaemonStatus } from '../devices/vdpa/launch.js';
import { stopDaemon, type DaemonRef } from '../vmm/vdpa.js';
import { processAlive } from '../src/libc.js';

type Update = { status: string; downtime: number; 'error-desc'?: string; 'x-cpr': { path: string; devices: { index: number; path: string; note?: string }[] } };

let vm: VmProcess | undefined;
let daemonToStop: DaemonRef | undefined;
afterEach(async () => {
  await vm?.kill();
  vm = undefined;
  // A VM that died leaves its daemon running: stop it, and remove its mount point, disk files and log, as the VM would have.
  if (daemonToStop) { await stopDaemon(daemonToStop); daemonToStop = undefined; }
});

/** The daemon the VM started: its mount is the directory of the device path in the VM's log. */
async function daemonOf(v: VmProcess): Promise<DaemonRef> {
  const c = await v.qmp();
  const info = await c.execute('x-query-vdpa') as { daemon: DaemonRef };
  c.close();
  return info.daemon;
}

/** Waits until the guest printed a stats line after `mark` showing more traffic than before. */
async function trafficFlows(v: VmProcess, mark: number): Promise<void> {
  const before = parseStats(v.stdout.slice(0, mark));
  const deadline = Date.now() + 20_000;
  for (;;) {
    const now = parseStats(v.stdout);
    const netOk = !before.net || (now.net && now.net.received > before.net.received);
    const blkOk = !before.blk || (now.blk && now.blk.verified > before.blk.verified);
    if (netOk && blkOk && v.stdout.length > mark) return;
    if (Date.now() > deadline) throw new Error(`traffic did not resume: ${v.stdout.slice(mark).slice(-300)} / ${v.stderr.slice(-300)}`);
    if (v.child.exitCode !== null) throw new Error(`VM exited ${v.child.exitCode}: ${v.stderr.slice(-500)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function soak(args: string[], updates: number): Promise<void> {
  vm = await VmProcess.start(['--memory', '1G', '--log-level', 'warn', ...args]);
  await vm.waitFor(/^net sent=.*\n/m, 60_000);
  const daemon = await daemonOf(vm);
  const snapshot = async () => ({ fds: await vm!.fds(), pinned: readDaemonStatus(daemon.dir).devices.map((d) => d.pinnedPages) });
  let first: Awaited<ReturnType<typeof snapshot>> | undefined;
  for (let i = 1; i <= updates; i++) {
    const mark = vm.stdout.length;
    const r = await runUpdate(vm.qmpPath, null, 30_000) as Update;
    expect(r.status, `${r['error-desc']} / VM stderr: ${vm.stderr.slice(-800)}`).toBe('completed');
    expect(r.downtime).toBeLessThan(1000); // sanity bound
    for (const d of r['x-cpr'].devices) expect(d.path).toBe('new-owner');
    await trafficFlows(vm, mark);
    if (i === 2) first = await snapshot();
  }
  const last = await snapshot();
  expect(last).toEqual(first);
  const s = parseStats(vm.stdout);
  if (s.net) {
    expect(s.net.received).toBeGreaterThan(0);
    expect({ lost: s.net.lost, duplicated: s.net.duplicated, corrupt: s.net.corrupt }).toEqual({ lost: 0, duplicated: 0, corrupt: 0 });
  }
  if (s.blk) {
    expect(s.blk.verified).toBeGreaterThan(0);
    expect(s.blk.mismatches).toBe(0);
  }
  expect(vm.stdout).not.toMatch(/MISMATCH|IOERR/);
}

describeWith(['guest', 'fuse', 'root'], 'vdpa devices across cpr-exec', () => {
  it('50 updates under net + blk traffic on va devices: no loss, all new-owner, no leaks', async () => {
    await soak(['--guest', 'netblk', '--vdpa', 'sim:net,va', '--vdpa', 'sim:blk,va'], 50);
  }, 300_000);

  it('50 updates under net traffic on a pinning (pa) device: nothing re-pinned, no loss', async () => {
    await soak(['--guest', 'netloop', '--vdpa', 'sim:net,pa'], 50);
  }, 300_000);

  it('a device without NEW_OWNER takes the fallback path, reported, and traffic survives', async () => {
    vm = await VmProcess.start(['--guest', 'netloop', '--memory', '1G', '--log-level', 'warn', '--vdpa', 'sim:net,no-new-owner']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    for (let i = 0; i < 3; i++) {
      const mark = vm.stdout.length;
      const r = await runUpdate(vm.qmpPath, null, 30_000) as Update;
      expect(r.status).toBe('completed');
      expect(r['x-cpr'].path).toBe('fallback');
      expect(r['x-cpr'].devices[0].path).toBe('fallback');
      await trafficFlows(vm, mark);
    }
    const s = parseStats(vm.stdout).net!;
    expect({ lost: s.lost, duplicated: s.duplicated, corrupt: s.corrupt }).toEqual({ lost: 0, duplicated: 0, corrupt: 0 });
  }, 120_000);

  it('a failure after exec and before NEW_OWNER: clear message, exit, the device left unowned and usable', async () => {
    vm = await VmProcess.start(['--guest', 'netloop', '--memory', '256M', '--log-level', 'warn', '--vdpa', 'sim:net']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const daemon = await daemonOf(vm);
    daemonToStop = daemon; // the VM dies without stopping it
    const argv = ['/usr/bin/env', 'MINIVMM_INJECT=fail-before-new-owner', process.execPath, ...vm.child.spawnargs.slice(1)];
    const r = await runUpdate(vm.qmpPath, argv, 10_000);
    expect(r.status).toBe('failed');
    expect(await vm.exited).toBe(1);
    expect(vm.stderr).toMatch(/injected failure before VHOST_NEW_OWNER; its fd was closed, so the device is released/);
    const dev = readDaemonStatus(daemon.dir).devices[0];
    expect(dev.owner).toBeNull();
    expect(dev.open).toBe(false);
    // A new VMM can take the device.
    const again = await VmProcess.start(['--guest', 'netloop', '--memory', '256M', '--log-level', 'warn', '--vdpa', `${daemon.dir}/vhost-vdpa-0`], tempDir());
    vm = again;
    await again.waitFor(/^net sent=\d+ received=[1-9]/m, 60_000);
  }, 120_000);

  // NEW_OWNER or REMAP failing after exec (docs/vhost-vdpa-live-update.md §4.3): the device is released (fd closed) and the
  // slow path re-acquires it; the update completes, says why, and no frame is lost.
  const faults: [string, 'new-owner' | 'remap', string, RegExp][] = [
    ['sim:net,va', 'new-owner', 'EOPNOTSUPP', /VHOST_NEW_OWNER.*EOPNOTSUPP/],
    ['sim:net,va', 'new-owner', 'EBUSY', /VHOST_NEW_OWNER.*EBUSY/],
    ['sim:net,pa', 'new-owner', 'ENOMEM', /VHOST_NEW_OWNER.*ENOMEM/],
    ['sim:net,va', 'remap', 'EINVAL', /IOTLB.*EFAULT/], // a handler error reaches write() as EFAULT
  ];
  it.each(faults)('%s: %s failing with %s after exec falls back, reported, no loss, and the next update is fast again', async (spec, op, errno, said) => {
    vm = await VmProcess.start(['--guest', 'netloop', '--memory', '512M', '--log-level', 'warn', '--vdpa', spec]);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const daemon = await daemonOf(vm);
    const name = readDaemonStatus(daemon.dir).devices[0].name;
    injectVdpaFault(daemon.dir, name, op, errno);
    let mark = vm.stdout.length;
    const r = await runUpdate(vm.qmpPath, null, 30_000) as Update;
    expect(r.status, r['error-desc']).toBe('completed');
    expect(r['x-cpr'].devices[0].path).toBe('fallback');
    expect(r['x-cpr'].devices[0].note).toMatch(said);
    expect(r['x-cpr'].devices[0].note).toMatch(/released and re-acquired by the slow path/);
    const dev = readDaemonStatus(daemon.dir).devices[0];
    expect(dev.counters.injected).toBe(1);
    expect(dev.owner?.pid).toBe(vm.child.pid);
    expect(dev.open).toBe(true);
    await trafficFlows(vm, mark);
    mark = vm.stdout.length;
    const again = await runUpdate(vm.qmpPath, null, 30_000) as Update;
    expect(again.status).toBe('completed');
    expect(again['x-cpr'].devices[0].path).toBe('new-owner');
    await trafficFlows(vm, mark);
    const s = parseStats(vm.stdout).net!;
    expect({ lost: s.lost, duplicated: s.duplicated, corrupt: s.corrupt }).toEqual({ lost: 0, duplicated: 0, corrupt: 0 });
  }, 120_000);
});

/**
 * `pid` is a zombie child of `parent`. (Whether /proc/PID exists says nothing: the number may
 * already belong to a new thread of any process.)
 */
function zombieChild(pid: number, parent: number): boolean {
  let stat: string;
  try { stat = readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { return false; }
  const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return state === 'Z' && Number(ppid) === parent;
}

/** The daemon process is gone and its mount with it (the VM stopped it on the way out). */
function daemonStopped(d: { pid: number; dir: string }): boolean {
  const mounted = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === d.dir);
  return !processAlive(d.pid) && !mounted;
}

describeWith(['guest', 'fuse', 'root'], 'SIGTERM during a cpr-exec update', () => {
  it('before the exec: the update is cancelled and the old image ends the VM cleanly', async () => {
    vm = await VmProcess.start(['--guest', 'netloop', '--memory', '256M', '--log-level', 'warn', '--vdpa', 'sim:net']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const daemon = await daemonOf(vm);
    injectVdpaFault(daemon.dir, 'vhost-vdpa-0', 'suspend', 'delay:1500'); // a slow device quiesce
    const update = runUpdate(vm.qmpPath, null, 30_000).catch((e: Error) => ({ status: `monitor gone: ${e.message}` }));
    await daemonLogged(daemon.dir, /injected a 1500 ms delay into suspend/); // the old image is quiescing: before the exec
    vm.child.kill('SIGTERM');
    expect(await within(vm.exited, 20_000, 'the VM exits')).toBe(143);
    await update;
    expect(vm.stderr).toMatch(/SIGTERM during a live update: the VM shuts down once the update settles/);
    expect(vm.stderr).toMatch(/cancelled by SIGTERM/);
    expect(daemonStopped(daemon)).toBe(true);
    expect(existsSync(vm.qmpPath)).toBe(false);
  }, 120_000);

  it('while the new image restores: it finishes the restore, then ends the VM cleanly', async () => {
    // On the slow path the new image re-maps the RAM; a 3 s hold on that UPDATE keeps it restoring when the signal comes.
    vm = await VmProcess.start(['--guest', 'netloop', '--memory', '1G', '--log-level', 'warn', '--vdpa', 'sim:net,pa,no-new-owner']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const daemon = await daemonOf(vm);
    injectVdpaFault(daemon.dir, 'vhost-vdpa-0', 'update', 'delay:3000');
    const update = runUpdate(vm.qmpPath, null, 30_000).catch((e: Error) => ({ status: `monitor gone: ${e.message}` }));
    await daemonLogged(daemon.dir, /injected a 3000 ms delay into update/); // the new image is in the middle of its restore
    vm.child.kill('SIGTERM');
    expect(await within(vm.exited, 20_000, 'the VM exits')).toBe(143);
    await update;
    expect(vm.child.signalCode).toBeNull(); // it exited; the signal did not kill it
    expect(vm.stderr, vm.stderr).toMatch(/SIGTERM: shutting down the VM after live update 1/);
    expect(daemonStopped(daemon)).toBe(true);
  }, 120_000);
});

describeWith(['guest', 'fuse', 'root'], 'the device daemon killed under a running VM', () => {
  it('is restarted and its devices re-attached: traffic resumes, the disk keeps its data, updates still take the fast path', async () => {
    vm = await VmProcess.start(['--guest', 'netblk', '--memory', '512M', '--log-level', 'warn', '--vdpa', 'sim:net', '--vdpa', 'sim:blk,pa']);
    await vm.waitFor(/^blk written=.*\n/m, 60_000);
    // One update first: the daemon is then a child that this (exec'd) image did not spawn.
    expect((await runUpdate(vm.qmpPath, null, 30_000) as Update).status).toBe('completed');
    const c = await vm.qmp();
    const before = (await c.execute('x-query-vdpa') as { daemon: { pid: number; dir: string; files: string[] } }).daemon;
    const restarted = c.event('VDPA_DAEMON_RESTARTED', 30_000);
    const mark = vm.stdout.length;
    process.kill(before.pid, 'SIGKILL');
    const ev = await restarted as { data: { pid: number; devices: number[]; 'outage-ms': number } };
    expect(ev.data.devices).toEqual([0, 1]);
    expect(ev.data.pid).not.toBe(before.pid);
    const after = (await c.execute('x-query-vdpa') as { daemon: { pid: number; restarts: number } }).daemon;
    c.close();
    expect(after).toMatchObject({ pid: ev.data.pid, restarts: 1 });
    expect(zombieChild(before.pid, vm.child.pid!)).toBe(false); // reaped, not left a zombie
    const dev = readDaemonStatus(before.dir).devices;
    expect(dev.map((d) => [d.owner?.pid, d.status])).toEqual([[vm.child.pid, 0x0f], [vm.child.pid, 0x0f]]);
    await trafficFlows(vm, mark);
    // The blk guest re-reads what it wrote before the kill: the disk (a file) outlived the daemon.
    const s = parseStats(vm.stdout);
    expect(s.blk!.mismatches).toBe(0);
    expect({ lost: s.net!.lost, duplicated: s.net!.duplicated, corrupt: s.net!.corrupt }).toEqual({ lost: 0, duplicated: 0, corrupt: 0 });
    expect(vm.stdout).not.toMatch(/MISMATCH|IOERR/);
    // The VM carries the new daemon across an update, on the fast path.
    const r = await runUpdate(vm.qmpPath, null, 30_000) as Update;
    expect(r.status, r['error-desc']).toBe('completed');
    expect(r['x-cpr'].devices.map((d) => d.path)).toEqual(['new-owner', 'new-owner']);
    await trafficFlows(vm, vm.stdout.length);
    // quit stops the restarted daemon and removes the disk file.
    const q = await vm.qmp();
    await q.execute('quit').catch(() => undefined);
    expect(await within(vm.exited, 20_000, 'the VM exits')).toBe(0);
    expect(daemonStopped({ pid: ev.data.pid, dir: before.dir })).toBe(true);
    for (const f of before.files) expect(existsSync(f)).toBe(false);
  }, 180_000);

  it('dies during a cpr-exec update: the new image restarts it and takes the device by the slow path, the guest is kept', async () => {
    vm = await VmProcess.start(['--guest', 'netloop', '--memory', '512M', '--log-level', 'warn', '--vdpa', 'sim:net']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const before = await daemonOf(vm);
    injectVdpaFault(before.dir, 'vhost-vdpa-0', 'new-owner', 'delay:3000'); // the new image's NEW_OWNER waits in the daemon
    const update = runUpdate(vm.qmpPath, null, 30_000) as Promise<Update>;
    await daemonLogged(before.dir, /injected a 3000 ms delay into new-owner/); // the new image's NEW_OWNER waits in the daemon
    const mark = vm.stdout.length;
    process.kill(before.pid, 'SIGKILL');
    const r = await update;
    expect(r.status, r['error-desc']).toBe('completed');
    expect(r['x-cpr'].devices[0].path).toBe('fallback');
    expect(r['x-cpr'].devices[0].note).toMatch(/device daemon died during the update/);
    const after = await daemonOf(vm) as { pid: number; restarts?: number };
    expect(after.pid).not.toBe(before.pid);
    expect(after.restarts).toBe(1);
    await trafficFlows(vm, mark);
    expect(parseStats(vm.stdout).net!.corrupt).toBe(0);
  }, 120_000);
});
