// Helpers that need a real VM: capture the CPR state blob a running `counter` VM hands its next
// image (a shell wrapper copies the sealed memfd, then execs the real new image), and the common
// "one line on stderr" check for real invocations.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BIN, VmProcess, tempDir } from '../harness.js';

/**
 * A real state blob from a live `counter` VM (the VM is ended afterwards). Throws, saying at which
 * step, when it cannot be captured: a broken cpr-exec must fail the tests that need the blob, not
 * leave them on synthetic seeds.
 */
export async function captureRealBlob(extraArgs: string[] = []): Promise<Buffer> {
  const dir = tempDir('minivmm-fuzz-cap-');
  const out = join(dir, 'state.bin');
  const args = ['--guest', 'counter', '--log-level', 'warn', ...extraArgs];
  const vm = await VmProcess.start(args, dir);
  try {
    await vm.waitFor(/counter \d+/);
    const c = await vm.qmp();
    const wrapper = `cat /proc/self/fd/\${MINIVMM_CPR_STATE%%,*} > '${out}'; exec "$0" "$@"`; // the hand-off is "<fd>,<saved>,<sent>,<keeper>"
    await c.execute('migrate-set-parameters', {
      mode: 'cpr-exec',
      'cpr-exec-command': ['/bin/sh', '-c', wrapper, process.execPath, BIN, 'run', ...args, '--qmp', vm.qmpPath],
    });
    await c.execute('migrate', { uri: 'file:/dev/null' });
    c.close();
    // The old image is gone once the wrapper runs; it copies the blob, then execs the new image.
    const deadline = Date.now() + 20_000;
    while (!existsSync(out)) {
      if (vm.child.exitCode !== null || Date.now() > deadline) throw new Error(vm.child.exitCode !== null ? `the VM exited ${vm.child.exitCode}` : 'no state file within 20 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    await vm.waitFor(/counter \d+/, 15_000, vm.stdout.length); // the new image restored from the same blob
    const after = await vm.qmp();
    const q = await after.execute('query-migrate') as { status?: string; 'error-desc'?: string };
    after.close();
    if (q.status !== 'completed') throw new Error(`the new image's query-migrate says ${q.status}: ${q['error-desc']}`);
    return readFileSync(out);
  } catch (e) {
    throw new Error(`capturing a real CPR state blob failed: ${(e as Error).message}; VM stderr: ${vm.stderr.slice(-400)}`);
  } finally {
    await vm.kill();
  }
}

/**
 * stderr without `--accel auto`'s notice: on a host where KVM cannot run, every `minivmm run` says
 * first, in one line, that the emulator runs the guest and why. That is information, not an error.
 */
export const withoutAccelNotice = (stderr: string): string => stderr.replace(/^minivmm: accelerator: [^\n]*\n/, '');

/** Why `stderr` (the accelerator notice apart) is not exactly one `minivmm: ` line without a stack trace, or null if it is. */
export function oneLineProblem(stderrWithNotice: string): string | null {
  const stderr = withoutAccelNotice(stderrWithNotice);
  const lines = stderr.replace(/\n$/, '').split('\n');
  if (stderr.trim() === '') return 'nothing on stderr';
  if (lines.length !== 1) return `${lines.length} lines on stderr: ${JSON.stringify(stderr.slice(0, 400))}`;
  if (!lines[0].startsWith('minivmm: ')) return `stderr does not start with 'minivmm: ': ${JSON.stringify(lines[0].slice(0, 200))}`;
  if (/\n\s+at |\bat [^ ]+ \(.*:\d+:\d+\)/.test(stderr)) return `stack trace on stderr: ${JSON.stringify(stderr.slice(0, 400))}`;
  return null;
}
