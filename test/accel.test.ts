// Choosing the accelerator (--accel kvm|emu|auto), and live updates that change it. "No KVM" is
// made for real: /dev/null bind-mounted over /dev/kvm in a private mount namespace, so the VMM
// opens a device that answers no KVM ioctl, as on a host whose /dev/kvm is unusable.
import { describe, it, expect, afterEach } from 'vitest';
import { spawn } from 'node:child_process';
import { BIN, VmProcess, runMinivmm } from './harness.js';
import { describeWith } from './facility.js';
import { runUpdate } from '../vmm/update.js';
import { oneLineProblem } from './fuzz/real.js';

/** `minivmm ARGS` in a mount namespace where /dev/kvm is /dev/null. */
function withoutKvm(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const script = 'mount --bind /dev/null /dev/kvm && exec "$@"';
  return new Promise((resolve) => {
    const c = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', process.execPath, BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    c.stdout.on('data', (d) => { stdout += d; });
    c.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('close', (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
}

describe('--accel on the command line', () => {
  it('refuses a name that is not kvm, emu or auto, with one line and exit 2', async () => {
    const r = await runMinivmm(['run', '--guest', 'hello', '--accel', 'tcg']);
    expect(r.code).toBe(2);
    expect(oneLineProblem(r.stderr)).toBeNull();
    expect(r.stderr).toMatch(/--accel tcg: expected kvm, emu or auto/);
  });
});

describeWith(['root', 'emu'], 'a host whose /dev/kvm is unusable', () => {
  it('auto runs the guest on the emulator and says so in one notice line', async () => {
    const r = await withoutKvm(['run', '--guest', 'hello', '--accel', 'auto']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Hello from minivmm guest$/m);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^minivmm: accelerator: emu .*\(\/dev\/kvm unusable: KVM_GET_API_VERSION failed: ENOTTY/)]);
  });

  it('--accel kvm fails with one line naming the reason, exit 2', async () => {
    const r = await withoutKvm(['run', '--guest', 'hello', '--accel', 'kvm']);
    expect(r.code).toBe(2);
    expect(oneLineProblem(r.stderr)).toBeNull();
    expect(r.stderr).toMatch(/--accel kvm: \/dev\/kvm unusable/);
  });
});

describeWith(['guest', 'kvm', 'emu'], 'a live update that changes the accelerator', () => {
  let vm: VmProcess | undefined;
  afterEach(async () => { await vm?.kill(); vm = undefined; });

  it('cpr-exec kvm -> emu -> kvm: counter continues, RAM intact, query-kvm and x-query-stats follow', async () => {
    vm = await VmProcess.start(['--guest', 'counter', '--accel', 'kvm']);
    await vm.waitFor(/^counter \d+ .*\n/m);
    const accelNow = async () => {
      const c = await vm!.qmp();
      const stats = await c.execute('x-query-stats') as { accelerator: string };
      const kvm = await c.execute('query-kvm') as { enabled: boolean; present: boolean };
      c.close();
      return { accelerator: stats.accelerator, kvm };
    };
    expect(await accelNow()).toEqual({ accelerator: 'kvm', kvm: { enabled: true, present: true } });
    for (const target of ['emu', 'kvm', 'emu'] as const) {
      const mark = vm.stdout.length;
      const argv = [process.execPath, BIN, 'run', '--guest', 'counter', '--qmp', vm.qmpPath, '--accel', target];
      const r = await runUpdate(vm.qmpPath, argv, 60_000) as { status: string; 'error-desc'?: string };
      expect(r.status, r['error-desc']).toBe('completed');
      expect(await accelNow()).toEqual({ accelerator: target, kvm: { enabled: target === 'kvm', present: true } });
      await vm.waitFor(/^counter \d+ .*\n/m, 60_000, mark);
    }
    const values = [...vm.stdout.matchAll(/^counter (\d+) tsc (\d+) round/gm)].map((m) => [Number(m[1]), Number(m[2])]);
    for (let i = 1; i < values.length; i++) {
      expect(values[i][0]).toBeGreaterThan(values[i - 1][0]); // the count goes on
      expect(values[i][1]).toBeGreaterThan(values[i - 1][1]); // and so does the guest's TSC
    }
    expect(vm.stdout).not.toMatch(/MISMATCH|TSC BACKWARDS/);
  }, 240_000);
});
