// A QMP client written for QEMU, not by us: the npm package qemu-qmp (callbacks, commands without
// newlines, replies matched in order, events re-emitted by lower-case name) drives a real VM
// through a cpr-exec live update.
import { afterAll, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import { describeWith } from './facility.js';
import { VmProcess, counterValues, within } from './harness.js';

interface Qmp {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
  connect(path: string, cb: (err: Error | null) => void): void;
  execute(cmd: string, args: Record<string, unknown> | ((err: Error | null, ret: unknown) => void), cb?: (err: Error | null, ret: unknown) => void): void;
  on(event: string, fn: () => void): void;
  once(event: string, fn: () => void): void;
  destroy(): void;
}
const QMP = createRequire(import.meta.url)('qemu-qmp') as new () => Qmp;

async function connect(path: string): Promise<Qmp> {
  const q = new QMP();
  await new Promise<void>((resolve, reject) => q.connect(path, (err) => (err ? reject(err) : resolve())));
  return q;
}
/** A command's return value; an error reply rejects; no reply within 10 s fails the test (no hang). */
function execute(q: Qmp, cmd: string, args?: Record<string, unknown>): Promise<unknown> {
  return within(new Promise((resolve, reject) => {
    const done = (err: Error | null, ret: unknown) => (err ? reject(err) : resolve(ret));
    if (args) q.execute(cmd, args, done); else q.execute(cmd, done);
  }), 10_000, `qemu-qmp: reply to ${cmd}`);
}
const event = (q: Qmp, name: string) => within(new Promise<void>((resolve) => q.once(name, resolve)), 30_000, `qemu-qmp: event ${name}`);

describeWith(['guest'], 'the npm QMP client qemu-qmp drives minivmm', () => {
  let vm: VmProcess;
  afterAll(async () => { await vm?.kill(); });

  it('negotiation, stop/cont with events, events capability, cpr-exec, reconnect, query-migrate polled to completed, quit', async () => {
    vm = await VmProcess.start(['--guest', 'counter', '--log-level', 'warn']);
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/);
    const q = await connect(vm.qmpPath);
    expect(q.version.package).toMatch(/minivmm/);
    expect(q.capabilities).toEqual([]);
    expect(await execute(q, 'query-status')).toMatchObject({ status: 'running', running: true });

    const stopped = event(q, 'stop');
    await execute(q, 'stop');
    await stopped;
    expect(await execute(q, 'query-status')).toMatchObject({ status: 'paused', running: false });
    const resumed = event(q, 'resume');
    await execute(q, 'cont');
    await resumed;

    await expect(execute(q, 'stop', { bogus: 1 })).rejects.toThrow("Parameter 'bogus' is unexpected");
    await execute(q, 'migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    expect(await execute(q, 'query-migrate-capabilities')).toEqual([{ capability: 'events', state: true }]);
    await execute(q, 'migrate-set-parameters', { mode: 'cpr-exec', 'cpr-exec-command': [] });
    expect(await execute(q, 'query-migrate-parameters')).toMatchObject({ mode: 'cpr-exec' });
    const migrating = event(q, 'migration'); // the setup event, sent because events is on
    const closed = event(q, 'close'); // the old image exec's: its connections close
    await execute(q, 'migrate', { uri: 'file:/dev/null' });
    await migrating;
    await closed;

    // The new image resumes with nobody connected: reconnect and poll query-migrate.
    const mark = vm.stdout.length;
    let info: Record<string, unknown> = {};
    let q2: Qmp | undefined;
    for (let i = 0; i < 400 && info.status !== 'completed'; i++) {
      try {
        q2 ??= await connect(vm.qmpPath);
        info = await execute(q2, 'query-migrate') as Record<string, unknown>;
      } catch { q2 = undefined; /* the new image is not listening yet */ }
      if (info.status !== 'completed') await new Promise((r) => setTimeout(r, 25));
    }
    expect(info.status, JSON.stringify(info)).toBe('completed');
    expect(Number.isInteger(info.downtime), `downtime ${info.downtime}`).toBe(true);
    expect(Number.isInteger(info['total-time'])).toBe(true);
    expect(info['total-time']).toBeGreaterThanOrEqual(info.downtime as number);
    expect(info.downtime).toBeLessThan(1000); // a sanity bound
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/, 10_000, mark); // the guest runs on
    const values = counterValues(vm.stdout);
    for (let i = 1; i < values.length; i++) expect(values[i]).toBeGreaterThan(values[i - 1]);

    const shutdown = event(q2!, 'shutdown');
    await execute(q2!, 'quit');
    await shutdown;
    expect(await vm.exited).toBe(0);
  });
});
