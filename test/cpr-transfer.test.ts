// cpr-transfer: the state and fds go to a pre-started process; rollback when it fails.
import { afterEach, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { describeWith } from './facility.js';
import { MovingVm, waitUntil, within } from './harness.js';
import { processAlive } from '../src/libc.js';
import { runUpdate } from '../vmm/update.js';
import { QmpConnection } from '../vmm/qmp.js';
import { parseStats } from '../tools/stats.js';

type Result = { status: string; downtime: number; 'x-rolled-back'?: boolean; 'error-desc'?: string; 'x-cpr': { mode: string; path: string; devices: { path: string }[] } };

let vm: MovingVm | undefined;
afterEach(async () => { await vm?.killAll(); vm = undefined; });

/** `channels`: QEMU 10's migrate form, a main channel (unused by minivmm) and the cpr channel. */
const transfer = async (v: MovingVm, env?: NodeJS.ProcessEnv, extra: Record<string, unknown> = {}, form: 'uri' | 'channels' = 'uri') => {
  const { sock, child } = await v.prepareIncoming(env);
  const unix = (path: string) => ({ transport: 'socket', type: 'unix', path });
  const target = form === 'uri' ? { uri: `unix:${sock}` }
    : { channels: [{ 'channel-type': 'main', addr: unix(`${sock}.main`) }, { 'channel-type': 'cpr', addr: unix(sock) }] };
  const r = await runUpdate(v.qmpPath, null, 30_000, { mode: 'cpr-transfer', ...target, ...extra }) as Result;
  if (r.status === 'completed') v.current = child;
  return { r, child };
};

/** Traffic moved on after `mark`, and nothing was lost, duplicated or corrupted. */
async function flowsClean(v: MovingVm, mark: number): Promise<void> {
  const before = parseStats(v.out.slice(0, mark));
  const deadline = Date.now() + 20_000;
  for (;;) {
    const now = parseStats(v.out);
    if ((!before.net || now.net!.received > before.net.received) && (!before.blk || now.blk!.verified > before.blk.verified) && v.out.length > mark) break;
    if (Date.now() > deadline) throw new Error(`traffic stopped: ${v.err.slice(-400)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const s = parseStats(v.out);
  if (s.net) expect({ lost: s.net.lost, duplicated: s.net.duplicated, corrupt: s.net.corrupt }).toEqual({ lost: 0, duplicated: 0, corrupt: 0 });
  if (s.blk) expect(s.blk.mismatches).toBe(0);
  expect(v.out).not.toMatch(/MISMATCH|IOERR/);
}

describeWith(['guest', 'fuse', 'root'], 'cpr-transfer', () => {
  it('moves a running guest and its vdpa devices to a pre-started process (migrate with a uri, and with channels)', async () => {
    vm = new MovingVm(['--guest', 'netblk', '--memory', '512M', '--log-level', 'warn', '--vdpa', 'sim:net', '--vdpa', 'sim:blk']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    for (let i = 0; i < 3; i++) {
      const old = vm.current;
      const mark = vm.out.length;
      const { r } = await transfer(vm, undefined, {}, i === 2 ? 'channels' : 'uri');
      expect(r.status, r['error-desc']).toBe('completed');
      expect(r['x-cpr'].mode).toBe('cpr-transfer');
      expect(r['x-rolled-back']).toBe(false);
      for (const d of r['x-cpr'].devices) expect(d.path).toBe('new-owner');
      expect(r.downtime).toBeLessThan(1000);
      await new Promise((res) => old.exitCode !== null ? res(null) : old.once('close', res));
      expect(old.exitCode).toBe(0); // the old process left after the commit
      await flowsClean(vm, mark);
    }
  }, 180_000);

  it('rolls back when the new process crashes before acknowledging: no frame lost, the guest stays', async () => {
    vm = new MovingVm(['--guest', 'netblk', '--memory', '512M', '--log-level', 'warn', '--vdpa', 'sim:net', '--vdpa', 'sim:blk,pa']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const old = vm.current;
    const mark = vm.out.length;
    const { r, child } = await transfer(vm, { ...process.env, MINIVMM_INJECT: 'new-process-crash' });
    expect(r.status).toBe('failed');
    expect(r['x-rolled-back']).toBe(true);
    expect(r['error-desc']).toMatch(/rolled back/);
    await new Promise((res) => (child.exitCode !== null || child.signalCode !== null ? res(null) : child.once('close', res)));
    expect(child.signalCode).toBe('SIGKILL'); // it died where the injection kills it: with the devices taken, before `ready`
    expect(vm.err).toMatch(/injected crash of the new process before it acknowledges/);
    expect(old.exitCode).toBeNull();
    await flowsClean(vm, mark);
    // The old process still owns its devices and can move later.
    const again = await transfer(vm);
    expect(again.r.status, again.r['error-desc']).toBe('completed');
    await flowsClean(vm, vm.out.length);
  }, 180_000);

  it('rolls back when the new process goes silent (stopped) after taking the devices: it is killed, the guest stays', async () => {
    vm = new MovingVm(['--guest', 'netloop', '--memory', '256M', '--log-level', 'warn', '--vdpa', 'sim:net']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const { sock, child } = await vm.prepareIncoming({ ...process.env, MINIVMM_INJECT: 'new-process-hang' });
    const mark = vm.out.length;
    const r = await runUpdate(vm.qmpPath, null, 30_000, { mode: 'cpr-transfer', uri: `unix:${sock}`, 'x-transfer-timeout-ms': 1000 }) as Result;
    expect(r.status).toBe('failed');
    expect(r['x-rolled-back']).toBe(true);
    expect(r['error-desc']).toMatch(/not ready within 1000 ms/);
    await new Promise((res) => (child.signalCode ? res(null) : child.once('close', res)));
    expect(child.signalCode).toBe('SIGKILL');
    expect(vm.err).toMatch(/injected hang of the new process/);
    await flowsClean(vm, mark);
  }, 120_000);

  it('a new process silent from the start (stopped) fails the transfer before the guest pauses; it is killed', async () => {
    vm = new MovingVm(['--guest', 'netloop', '--memory', '256M', '--log-level', 'warn', '--vdpa', 'sim:net']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const { sock, child } = await vm.prepareIncoming();
    child.kill('SIGSTOP');
    const mark = vm.out.length;
    const r = await runUpdate(vm.qmpPath, null, 30_000, { mode: 'cpr-transfer', uri: `unix:${sock}`, 'x-transfer-timeout-ms': 1000 }) as Result;
    expect(r.status).toBe('failed');
    expect(r['x-rolled-back']).toBeUndefined(); // nothing to roll back: the guest never paused
    expect(r['error-desc']).toMatch(/failed before pausing the guest: no answer within 1000 ms/);
    await new Promise((res) => (child.signalCode ? res(null) : child.once('close', res)));
    expect(child.signalCode).toBe('SIGKILL');
    await flowsClean(vm, mark);
  }, 120_000);

  it('a transfer to a socket nobody listens on fails before pausing the guest', async () => {
    vm = new MovingVm(['--guest', 'counter', '--memory', '256M', '--log-level', 'warn']);
    await vm.waitFor(/^counter /m, 30_000);
    const r = await runUpdate(vm.qmpPath, null, 10_000, { mode: 'cpr-transfer', uri: `unix:${vm.dir}/nobody.sock` }) as Result;
    expect(r.status).toBe('failed');
    expect(r['error-desc']).toMatch(/cannot reach the new process/);
    expect(r['x-rolled-back']).toBeUndefined();
    const mark = vm.out.length;
    await vm.waitFor(/^counter /m, 10_000, mark);
  }, 60_000);

  it('soak: 50 updates alternating cpr-exec and cpr-transfer under traffic, va and pa devices', async () => {
    vm = new MovingVm(['--guest', 'netblk', '--memory', '512M', '--log-level', 'warn', '--vdpa', 'sim:net,pa', '--vdpa', 'sim:blk']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    let fds0: string[] = [];
    for (let i = 1; i <= 50; i++) {
      const mark = vm.out.length;
      const r = i % 2 ? (await runUpdate(vm.qmpPath, null, 30_000)) as Result : (await transfer(vm)).r;
      expect(r.status, `update ${i}: ${r['error-desc']} ${vm.err.slice(-300)}`).toBe('completed');
      await flowsClean(vm, mark);
      if (i === 2) fds0 = await vm.fdTargets();
    }
    expect(await vm.fdTargets()).toEqual(fds0); // same kinds of fds, same number: nothing leaks
  }, 400_000);

  it('SIGTERM to the old process during a transfer: the transfer completes and the new process ends the VM cleanly', async () => {
    vm = new MovingVm(['--guest', 'netloop', '--memory', '256M', '--log-level', 'warn', '--vdpa', 'sim:net']);
    await vm.waitFor(/^net sent=.*\n/m, 60_000);
    const watch = await QmpConnection.connect(vm.qmpPath);
    const daemon = (await watch.execute('x-query-vdpa') as { daemon: { pid: number; dir: string } }).daemon;
    const old = vm.current;
    const { sock, child } = await vm.prepareIncoming();
    child.kill('SIGSTOP'); // the old process then waits for its answer (x-transfer-timeout-ms: 5 s)
    const update = runUpdate(vm.qmpPath, null, 30_000, { mode: 'cpr-transfer', uri: `unix:${sock}` }).catch((e: Error) => ({ status: `monitor gone: ${e.message}` }));
    await watch.event('MIGRATION', 10_000); // setup: the update has begun
    watch.close();
    const mark = vm.err.length;
    old.kill('SIGTERM');
    await waitUntil(() => vm!.err.slice(mark).includes('SIGTERM during a live update: the VM shuts down once the update settles') || old.exitCode !== null,
      10_000, 'the old process says it holds the signal');
    expect(old.exitCode, vm.err.slice(mark)).toBeNull(); // still waiting: the signal is held
    child.kill('SIGCONT');
    await update;
    const code = (p: typeof old) => new Promise((r) => (p.exitCode !== null ? r(p.exitCode) : p.once('close', (x) => r(x))));
    expect(await within(code(old), 20_000, 'the old process exits')).toBe(0); // handed over, then left
    expect(await within(code(child), 20_000, 'the new process exits')).toBe(143); // restored, then ended on the forwarded signal
    expect(vm.err, vm.err).toMatch(/SIGTERM: shutting down the VM after live update 1/);
    expect(processAlive(daemon.pid)).toBe(false); // the new process stopped the daemon
    expect(existsSync(`${daemon.dir}/vhost-vdpa-0`)).toBe(false); // and its mount is gone
  }, 120_000);
});
