// Foundation: boot toy guests on KVM, bad input, QMP, and cpr-exec live update of `counter`.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { openSync, writeFileSync, closeSync, readFileSync } from 'node:fs';
import { ACCEL, describeWith, missing } from './facility.js';
import { BUILD, runMinivmm, VmProcess, counterValues, tempDir, writeTinyElf, waitUntil } from './harness.js';
import { encodeState, loadEncoder, type CprState } from '../cpr/envelope.js';
import { plausibleState } from './fuzz/state.js';
import { withoutAccelNotice } from './fuzz/real.js';
import { processAlive } from '../src/libc.js';

const oneLineError = (stderrWithNotice: string) => {
  const stderr = withoutAccelNotice(stderrWithNotice);
  const lines = stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^minivmm: /);
  expect(stderr).not.toMatch(/\n\s+at /);
};

describeWith(['guest'], 'guests boot and exit', () => {
  it('hello prints the greeting and exits 0', async () => {
    const r = await runMinivmm(['run', '--guest', 'hello']);
    expect(r.stdout).toContain('Hello from minivmm guest\n');
    expect(r.stdout).toContain('ram=268435456 cpus=1');
    expect(r.code).toBe(0);
  });

  it('memtest passes over 16 GiB', async () => {
    const r = await runMinivmm(['run', '--guest', 'memtest', '--memory', '16G'], { timeoutMs: 120_000 });
    expect(r.stdout).toMatch(/memtest ok chunks=\d+ ram=17179869184/);
    expect(r.code).toBe(0);
  });

  it('--serial FILE appends the guest output to the file', async () => {
    const out = join(tempDir(), 'serial.txt');
    writeFileSync(out, 'before\n');
    const r = await runMinivmm(['run', '--guest', 'hello', '--serial', out]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(out, 'utf8')).toMatch(/^before\nHello from minivmm guest\n/);
  });

  it('the exit port value becomes the exit status', async () => {
    // mov eax, 42; out 0xf4, eax; hlt; jmp $-1
    const elf = writeTinyElf(join(tempDir(), 'exit42.elf'), Buffer.from([0xb8, 42, 0, 0, 0, 0xe7, 0xf4, 0xf4, 0xeb, 0xfd]));
    const r = await runMinivmm(['run', '--guest', elf]);
    expect(r.code).toBe(42);
  });

  it('an instruction that cannot complete (ud2 with no IDT: a triple fault) stops the VM with one line naming the guest RIP and instruction bytes', async () => {
    const elf = writeTinyElf(join(tempDir(), 'ud2.elf'), Buffer.from([0x0f, 0x0b, 0xf4]));
    const r = await runMinivmm(['run', '--guest', elf]);
    expect(r.code).toBe(1);
    oneLineError(r.stderr);
    expect(r.stderr).toMatch(/triple fault.*RIP 0x100000, instruction bytes 0f 0b f4/);
  });

  if (ACCEL !== 'kvm') process.stdout.write(`skip: KVM's instruction emulator failing on BMI2: guests run on ${ACCEL ?? 'no accelerator'}, not KVM\n`);
  it.skipIf(ACCEL !== 'kvm')('an instruction KVM\'s emulator does not know (BMI2 shlx) is reported with the guest RIP and instruction bytes', async () => {
    const elf = writeTinyElf(join(tempDir(), 'bmi2.elf'), Buffer.from([0xc4, 0xe2, 0xf1, 0xf7, 0xc3, 0xf4]));
    const r = await runMinivmm(['run', '--guest', elf]);
    expect(r.code).not.toBe(0);
    oneLineError(r.stderr);
    expect(r.stderr).toMatch(/RIP 0x100000, instruction bytes c4 e2 f1 f7 c3/);
  });
});

describe('loading ffi-rs', () => {
  it('asks for no diagnostic report, leaves process.report as it was, and agrees with the report on the C library', () => {
    // A fresh process: the module loads ffi-rs once, at import.
    const script = `
      const real = process.report.getReport;
      let calls = 0;
      const counting = function (...a) { calls++; return real.apply(this, a); };
      process.report.getReport = counting;
      const { default: ffi, mapsGlibc } = await import(${JSON.stringify(pathToFileURL(join(BUILD, 'dist/src/ffi.js')).href)});
      const restored = process.report.getReport === counting, during = calls;
      const glibcByReport = Boolean(real.call(process.report).header.glibcVersionRuntime);
      console.log(JSON.stringify({ during, restored, glibcByReport, glibcByMaps: mapsGlibc(), load: typeof ffi.load }));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout);
    expect({ during: out.during, restored: out.restored, load: out.load }).toEqual({ during: 0, restored: true, load: 'function' });
    expect(out.glibcByMaps).toBe(out.glibcByReport);
  });
});

describe('bad input gets one line and a non-zero exit', () => {
  const cases: [string, string[], RegExp][] = [
    ['missing guest', ['run', '--guest', '/nonexistent'], /does not exist/],
    ['unknown built-in', ['run', '--guest', 'nosuchguest'], /unknown guest/],
    ['size that does not parse', ['run', '--guest', 'hello', '--memory', 'banana'], /invalid size 'banana'/],
    ['size beyond host memory', ['run', '--guest', 'hello', '--memory', '4096G'], /exceeds host memory/],
    ['bad smp', ['run', '--guest', 'hello', '--smp', '9'], /--smp/],
    ['unknown option', ['run', '--guest', 'hello', '--frobnicate'], /frobnicate/],
    ['unknown command', ['fly'], /unknown command/],
    ['qmp without a server', ['qmp', '--socket', '/nonexistent/q.sock', 'query-status'], /cannot connect/],
  ];
  for (const [name, args, re] of cases) {
    it(name, async () => {
      const r = await runMinivmm(args);
      expect(r.code).not.toBe(0);
      expect(r.stderr.split('\n')[0]).toMatch(re);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    });
  }

  it('a file that is not an ELF64 image', async () => {
    const p = join(tempDir(), 'not.elf');
    writeFileSync(p, 'hello world, not an ELF file at all, just some text that is long enough');
    const r = await runMinivmm(['run', '--guest', p]);
    expect(r.code).not.toBe(0);
    oneLineError(r.stderr);
    expect(r.stderr).toMatch(/not an ELF file/);
  });

  it('an ELF whose segment lies outside guest RAM', async () => {
    const p = writeTinyElf(join(tempDir(), 'far.elf'), Buffer.from([0xf4]), (elf) => elf.writeBigUInt64LE(0x7000000000n, 64 + 24));
    const r = await runMinivmm(['run', '--guest', p]);
    expect(r.code).not.toBe(0);
    oneLineError(r.stderr);
    expect(r.stderr).toMatch(/segment 0/);
  });
});

await loadEncoder();

describeWith(['guest'], 'a corrupt CPR state blob is rejected by the new image', () => {
  const sample = plausibleState();
  const valid: CprState = { ...sample, vmm: { ...sample.vmm, machine: { ...sample.vmm.machine, vcpus: [] } } };
  const blobs: [string, Buffer, RegExp][] = [
    ['garbage', Buffer.from('this is not a state blob at all........'), /bad magic/],
    ['truncated', encodeState(valid).subarray(0, 30), /length mismatch|truncated/],
    ['flipped byte', (() => { const b = Buffer.from(encodeState(valid)); b[b.length - 3] ^= 0xff; return b; })(), /checksum/],
    ['future version', (() => { const b = Buffer.from(encodeState(valid)); b.writeUInt32LE(99, 8); return b; })(), /version 99 is not supported/],
    ['empty', Buffer.alloc(0), /truncated/],
    ['well-formed but inconsistent', encodeState(valid), /malformed: state.machine.vcpus/],
  ];
  for (const [name, blob, re] of blobs) {
    it(name, async () => {
      const p = join(tempDir(), 'state.bin');
      writeFileSync(p, blob);
      const fd = openSync(p, 'r');
      const r = await runMinivmm([], { env: { ...process.env, MINIVMM_CPR_STATE: '3,0,0,0' }, stdio: ['ignore', 'pipe', 'pipe', fd] });
      closeSync(fd);
      expect(r.code).toBe(1);
      oneLineError(r.stderr);
      expect(r.stderr).toMatch(re);
    });
  }
});

describeWith(['guest'], 'an exec target that dies before restoring', () => {
  it('loses the guest, and says so; the process is gone', async () => {
    const vm2 = await VmProcess.start(['--guest', 'counter', '--log-level', 'warn']);
    await vm2.waitFor(/counter \d+ tsc \d+ round \d+\n/);
    const { runUpdate } = await import('../vmm/update.js');
    const r = await runUpdate(vm2.qmpPath, ['/bin/false'], 3000);
    expect(r.status).toBe('failed');
    expect(String(r['error-desc'])).toMatch(/the guest is lost; its vdpa devices were released/);
    expect(await vm2.exited).toBe(1); // /bin/false's status: the VMM image was replaced
  });
});

describeWith(['guest'], 'the serial output\'s reader', () => {
  it('goes away: the output stops with one line on stderr, the guest runs on', async () => {
    const vm = await VmProcess.start(['--guest', 'counter', '--log-level', 'warn']);
    try {
      await vm.waitFor(/^counter \d+/m);
      vm.child.stdout!.destroy(); // the reader of the VMM's stdout is gone: its next write gets EPIPE
      for (let i = 0; i < 200 && !/serial output stopped/.test(vm.stderr); i++) await new Promise((r) => setTimeout(r, 50));
      expect(vm.stderr).toMatch(/^minivmm: serial output stopped \(EPIPE\); the guest runs on$/m);
      const c = await vm.qmp();
      expect(await c.execute('query-status')).toMatchObject({ status: 'running' });
      c.close();
      expect(vm.child.exitCode).toBeNull();
    } finally { await vm.kill(); }
  });
});

describeWith(['guest'], 'QMP monitor', () => {
  let vm: VmProcess;
  const others: VmProcess[] = [];
  afterAll(async () => { for (const v of [vm, ...others]) await v?.kill(); });

  it('speaks the protocol: greeting, negotiation, errors, stop/cont with events', async () => {
    vm = await VmProcess.start(['--guest', 'counter']);
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/);
    const { QmpConnection } = await import('../vmm/qmp.js');
    const raw = await import('node:net').then((net) => net.connect(vm.qmpPath));
    const got: string[] = [];
    raw.setEncoding('utf8');
    raw.on('data', (d: string) => got.push(...d.split('\r\n').filter(Boolean)));
    const waitLines = async (n: number) => { for (let i = 0; i < 200 && got.length < n; i++) await new Promise((r) => setTimeout(r, 10)); };
    await waitLines(1);
    expect(JSON.parse(got[0]).QMP.version.package).toMatch(/minivmm/);
    raw.write('{"execute":"query-status"}\n');
    await waitLines(2);
    expect(JSON.parse(got[1]).error.class).toBe('CommandNotFound');
    // A JSON stream, as QEMU reads it: no newlines needed, several objects per write.
    raw.write('{"execute":"qmp_capabilities","id":7}{not json}["array"]{"execute":"no-such-command"}');
    await waitLines(6);
    expect(JSON.parse(got[2])).toEqual({ return: {}, id: 7 });
    expect(JSON.parse(got[3]).error.desc).toBe("JSON parse error, invalid keyword 'not'");
    expect(JSON.parse(got[4]).error.class).toBe('GenericError');
    expect(JSON.parse(got[5]).error.class).toBe('CommandNotFound');
    raw.destroy();

    const c = await QmpConnection.connect(vm.qmpPath);
    expect(await c.execute('query-version')).toMatchObject({ package: 'minivmm 0.1.0' });
    await c.execute('stop');
    await c.event('STOP', 5000);
    expect(await c.execute('query-status')).toMatchObject({ status: 'paused', running: false });
    const before = counterValues(vm.stdout).length;
    await new Promise((r) => setTimeout(r, 500));
    expect(counterValues(vm.stdout).length).toBe(before); // paused means paused
    await c.execute('cont');
    await c.event('RESUME', 5000);
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/, 5000, vm.stdout.length);
    await expect(c.execute('migrate', { uri: 'file:/dev/null' })).rejects.toThrow(/mode 'normal' is not supported/);
    await c.execute('migrate-set-parameters', { mode: 'cpr-exec' });
    await expect(c.execute('migrate', { uri: 'tcp:1.2.3.4:5' })).rejects.toThrow(/file:PATH/);
    await expect(c.execute('migrate-set-parameters', { mode: 'cpr-teleport' })).rejects.toThrow(/mode/);
    await expect(c.execute('stop', { bogus: 1 })).rejects.toThrow("Parameter 'bogus' is unexpected");
    expect(await c.execute('query-status')).toMatchObject({ running: true }); // refused before acting
    expect(await c.execute('query-kvm')).toEqual({ enabled: ACCEL === 'kvm', present: missing('kvm') === null });
    const { statSync } = await import('node:fs');
    expect(statSync(vm.qmpPath).mode & 0o777).toBe(0o600);
    // quit: the reply carries the id, SHUTDOWN gives QEMU's reason, the VMM exits 0.
    const shutdown = c.event('SHUTDOWN', 10_000);
    expect(await c.request('quit')).toEqual({ return: {} }); // matched by its id
    expect((await shutdown).data).toEqual({ guest: false, reason: 'host-qmp-quit' });
    expect(await vm.exited).toBe(0);
    c.close();
  });

  it("several clients' stop and cont run one at a time (QEMU's single dispatcher): the guest runs afterwards", async () => {
    const busy = await VmProcess.start(['--guest', 'counter']);
    others.push(busy);
    await busy.waitFor(/counter \d+ tsc \d+ round \d+\n/);
    const net = await import('node:net');
    const connect = () => new Promise<import('node:net').Socket>((res) => { const s = net.connect(busy.qmpPath); s.once('connect', () => res(s)); });
    for (let round = 0; round < 10; round++) {
      const all = await Promise.all([connect(), connect(), connect()]);
      for (const s of all) s.write('{"execute":"qmp_capabilities"}{"execute":"stop"}{"execute":"cont"}{"execute":"stop"}');
      await new Promise((r) => setTimeout(r, 50));
      for (const s of all) s.destroy();
    }
    const { QmpConnection } = await import('../vmm/qmp.js');
    const c = await QmpConnection.connect(busy.qmpPath);
    await c.execute('cont');
    expect(await c.execute('query-status')).toMatchObject({ running: true });
    const mark = busy.stdout.length;
    await busy.waitFor(/counter \d+ tsc \d+ round \d+\n/, 10_000, mark); // the vCPUs really run
    c.close();
  });

  it('SHUTDOWN says host-signal for SIGTERM and guest-shutdown when the guest ends', async () => {
    const { QmpConnection } = await import('../vmm/qmp.js');
    const signalled = await VmProcess.start(['--guest', 'counter']);
    others.push(signalled);
    const c = await QmpConnection.connect(signalled.qmpPath);
    const shutdown = c.event('SHUTDOWN', 10_000);
    signalled.child.kill('SIGTERM');
    expect((await shutdown).data).toEqual({ guest: false, reason: 'host-signal' });
    expect(await signalled.exited).toBe(143);
    c.close();
    const ending = await VmProcess.start(['--guest', 'counter', '--append', 'rounds=40']);
    others.push(ending);
    const e = await QmpConnection.connect(ending.qmpPath);
    expect((await e.event('SHUTDOWN', 60_000)).data).toEqual({ guest: true, reason: 'guest-shutdown' });
    await ending.exited;
    e.close();
  });
});

describeWith(['guest'], 'cpr-exec live update of the counter guest', () => {
  it('survives 20 consecutive updates: counter increases, RAM intact, same pid, no fd leak', async () => {
    const vm = await VmProcess.start(['--guest', 'counter', '--memory', '1G', '--log-level', 'warn']);
    try { await twentyUpdates(vm); } finally { await vm.kill(); }
  });

  async function twentyUpdates(vm: VmProcess): Promise<void> {
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/);
    const { runUpdate } = await import('../vmm/update.js');
    const fdSets: string[][] = [];
    const downtimes: number[] = [];
    for (let i = 1; i <= 20; i++) {
      const mark = vm.stdout.length;
      const r = await runUpdate(vm.qmpPath, null, 30_000) as { status: string; downtime: number; 'x-cpr': { n: number; path: string; phases: Record<string, number> } };
      downtimes.push(r.downtime);
      expect(r.status, JSON.stringify(r)).toBe('completed');
      expect(r['x-cpr'].n).toBe(i);
      expect(Number.isInteger(r.downtime)).toBe(true); // QEMU's schema: int milliseconds
      expect(r.downtime).toBeGreaterThan(0);
      expect(r.downtime).toBeLessThan(1000); // a sanity bound, not a benchmark
      for (const k of ['pause', 'save', 'exec', 'restore', 'resume']) expect(r['x-cpr'].phases[k]).toBeGreaterThanOrEqual(0);
      await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/, 10_000, mark); // the guest prints again after the update
      fdSets.push(await vm.fds());
    }
    expect(vm.child.exitCode).toBeNull();
    const values = counterValues(vm.stdout);
    expect(values.length).toBeGreaterThanOrEqual(20);
    for (let i = 1; i < values.length; i++) expect(values[i]).toBeGreaterThan(values[i - 1]);
    expect(vm.stdout).not.toMatch(/MISMATCH|TSC BACKWARDS/);
    expect(fdSets[fdSets.length - 1]).toEqual(fdSets[0]);
    // The guest's TSC never jumps by more than a pause: no gap between two rounds exceeds the
    // slowest round plus the longest blackout (both in TSC ticks), with a margin for noise.
    const tscs = [...vm.stdout.matchAll(/^counter \d+ tsc (\d+) round/gm)].map((m) => Number(m[1]));
    const gaps = tscs.slice(1).map((t, i) => t - tscs[i]);
    expect(Math.min(...gaps)).toBeGreaterThan(0);
    const { openAccelerator } = await import('../src/accel/select.js');
    const khz = (await openAccelerator(ACCEL!)).accel.createVm(1).vcpus[0].tscKhz(); // the rate the guest's TSC runs at
    const sorted = [...gaps].sort((a, b) => a - b);
    const typical = sorted[Math.floor(sorted.length / 2)];
    expect(Math.max(...gaps)).toBeLessThan(3 * typical + (Math.max(...downtimes) + 500) * khz);
    expect(vm.stderr).not.toMatch(/error/i);
  }
});

/** Pids of `pid`'s child processes (its main thread's: every process it forks or clones). */
function childrenOf(pid: number): number[] {
  try { return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number); } catch { return []; }
}

describeWith(['guest'], 'the address-space keeper of a cpr-exec', () => {
  it('holds the old address space of a guest that touched all its RAM until the guest runs, then is reaped', async () => {
    const vm = await VmProcess.start(['--guest', 'counter', '--memory', '256M', '--append', 'touch=1', '--log-level', 'warn']);
    try {
      await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/, 60_000);
      expect(vm.stdout).toMatch(/touched \d+ pages/);
      const { runUpdate } = await import('../vmm/update.js');
      for (let i = 1; i <= 3; i++) {
        const mark = vm.stdout.length;
        const r = await runUpdate(vm.qmpPath, null, 30_000) as { status: string; 'x-cpr': Record<string, unknown> };
        expect(r.status, JSON.stringify(r)).toBe('completed');
        expect(r['x-cpr']['old-address-space']).toBe('kept until resume');
        await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/, 10_000, mark);
        await waitUntil(() => childrenOf(vm.pid).length === 0, 5000, 'the keeper to be reaped');
      }
      expect(vm.stdout).not.toMatch(/MISMATCH/);
      expect(vm.stderr).not.toMatch(/keeper/);
    } finally { await vm.kill(); }
  });

  it('dies with the VMM process: an exec target that never restores, killed, leaves no keeper behind', async () => {
    const vm = await VmProcess.start(['--guest', 'counter', '--log-level', 'warn']);
    try {
      await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/);
      const { runUpdate } = await import('../vmm/update.js');
      const update = runUpdate(vm.qmpPath, ['/bin/sleep', '30'], 3000).catch(() => undefined);
      const comm = () => { try { return readFileSync(`/proc/${vm.pid}/comm`, 'utf8').trim(); } catch { return ''; } };
      await waitUntil(() => comm() === 'sleep', 5000, 'the exec into sleep');
      const keepers = childrenOf(vm.pid);
      expect(keepers).toHaveLength(1); // the keeper outlived the old image
      process.kill(vm.pid, 'SIGKILL');
      await waitUntil(() => !processAlive(keepers[0]), 5000, 'the keeper to die with the VMM process');
      await vm.exited;
      await update;
    } finally { await vm.kill(); }
  });
});

describeWith(['guest'], 'cpr-exec of the counter guest: monitor and failure cases', () => {
  let vm: VmProcess;
  beforeAll(async () => {
    vm = await VmProcess.start(['--guest', 'counter', '--memory', '1G', '--log-level', 'warn']);
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/);
  });
  afterAll(async () => { await vm?.kill(); });

  /** query-migrate from whichever image answers (retrying while an exec is under way). */
  const queryMigrate = async (): Promise<{ status?: string; 'x-cpr'?: { n: number } }> => {
    const { QmpConnection } = await import('../vmm/qmp.js');
    for (let i = 0; ; i++) {
      try { const q = await QmpConnection.connect(vm.qmpPath); const r = await q.execute('query-migrate'); q.close(); return r as never; } catch (e) {
        if (i > 200) throw e;
        await new Promise((res) => setTimeout(res, 50));
      }
    }
  };

  it('a QMP client that disconnects right after migrate does not stop the update', async () => {
    const { QmpConnection } = await import('../vmm/qmp.js');
    const before = (await queryMigrate())['x-cpr']?.n ?? 0;
    const c = await QmpConnection.connect(vm.qmpPath);
    await c.execute('migrate-set-parameters', { mode: 'cpr-exec', 'cpr-exec-command': [] });
    c.socket.write('{"execute":"migrate","arguments":{"uri":"file:/dev/null"}}\n');
    c.close();
    let r = await queryMigrate();
    for (let i = 0; i < 200 && r['x-cpr']?.n !== before + 1; i++) { await new Promise((res) => setTimeout(res, 50)); r = await queryMigrate(); }
    expect(r.status).toBe('completed');
    expect(r['x-cpr']?.n).toBe(before + 1);
  });

  it('a second migrate while one is in progress is refused, and the first completes', async () => {
    const before = (await queryMigrate())['x-cpr']?.n ?? 0;
    const net = await import('node:net');
    const raw = net.connect(vm.qmpPath);
    const lines: string[] = [];
    raw.setEncoding('utf8');
    raw.on('data', (d: string) => lines.push(...d.split('\r\n').filter(Boolean)));
    // Both commands in one write: the second is dispatched before the first's exec starts.
    raw.write('{"execute":"qmp_capabilities"}\n{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-exec","cpr-exec-command":[]}}\n'
      + '{"execute":"migrate","arguments":{"uri":"file:/dev/null"},"id":1}\n{"execute":"migrate","arguments":{"uri":"file:/dev/null"},"id":2}\n');
    const replies = () => lines.map((l) => JSON.parse(l)).filter((m) => m.id === 1 || m.id === 2);
    for (let i = 0; i < 200 && replies().length < 2; i++) await new Promise((res) => setTimeout(res, 10));
    raw.destroy();
    const [a, b] = replies();
    expect(a).toEqual({ return: {}, id: 1 });
    expect(b.error.desc).toMatch(/already a migration in progress/);
    let r = await queryMigrate();
    for (let i = 0; i < 200 && r['x-cpr']?.n !== before + 1; i++) { await new Promise((res) => setTimeout(res, 50)); r = await queryMigrate(); }
    expect(r['x-cpr']?.n).toBe(before + 1);
  });

  it('a failed exec keeps the guest running and reports failed; the next update succeeds', async () => {
    const { runUpdate } = await import('../vmm/update.js');
    const fds = await vm.fds();
    const bad = await runUpdate(vm.qmpPath, ['/nonexistent/minivmm-next'], 10_000);
    expect(bad.status).toBe('failed');
    expect(String(bad['error-desc'])).toMatch(/execve\(\/nonexistent\/minivmm-next\) failed: ENOENT/);
    const mark = vm.stdout.length;
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/, 10_000, mark); // still running
    expect(await vm.fds()).toEqual(fds); // CLOEXEC restored, state memfd closed
    const good = await runUpdate(vm.qmpPath, null, 30_000);
    expect(good.status).toBe('completed');
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/, 10_000, vm.stdout.length);
    const values = counterValues(vm.stdout);
    for (let i = 1; i < values.length; i++) expect(values[i]).toBeGreaterThan(values[i - 1]);
  });
});
