// Helpers that need a real VM: capture the CPR state blob a running `counter` VM hands its next
// image (a shell wrapper copies the sealed memfd, then execs the real new image), and the common
// "one line on stderr" check for real invocations.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BIN, VmProcess, tempDir } from '../harness.js';

/** A real state blob from a live `counter` VM (the VM is killed afterwards). Null if capture failed. */
export async function captureRealBlob(extraArgs: string[] = []): Promise<Buffer | null> {
  const dir = tempDir('minivmm-fuzz-cap-');
  const out = join(dir, 'state.bin');
  const args = ['--guest', 'counter', '--log-level', 'warn', ...extraArgs];
  const vm = await VmProcess.start(args, dir);
  try {
    await vm.waitFor(/counter \d+/);
    const c = await vm.qmp();
    const wrapper = `cat /proc/self/fd/\${MINIVMM_CPR_STATE%%,*} > '${out}'; exec "$0" "$@"`; // the hand-off is "<fd>,<saved>,<sent>"
    await c.execute('migrate-set-parameters', {
      mode: 'cpr-exec',
      'cpr-exec-command': ['/bin/sh', '-c', wrapper, process.execPath, BIN, 'run', ...args, '--qmp', vm.qmpPath],
    });
    await c.execute('migrate', { uri: 'file:/dev/null' });
    c.close();
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (existsSync(out)) {
        const mark = vm.stdout.length;
        await vm.waitFor(/counter \d+/, 15_000, mark); // the new image restored from the same blob
        return readFileSync(out);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return null;
  } catch {
    return null;
  } finally {
    await vm.kill();
  }
}

/** Why `stderr` is not exactly one `minivmm: ` line without a stack trace, or null if it is. */
export function oneLineProblem(stderr: string): string | null {
  const lines = stderr.replace(/\n$/, '').split('\n');
  if (stderr.trim() === '') return 'nothing on stderr';
  if (lines.length !== 1) return `${lines.length} lines on stderr: ${JSON.stringify(stderr.slice(0, 400))}`;
  if (!lines[0].startsWith('minivmm: ')) return `stderr does not start with 'minivmm: ': ${JSON.stringify(lines[0].slice(0, 200))}`;
  if (/\n\s+at |\bat [^ ]+ \(.*:\d+:\d+\)/.test(stderr)) return `stack trace on stderr: ${JSON.stringify(stderr.slice(0, 400))}`;
  return null;
}

/** The build under dist/ was being rewritten by a concurrent `tsc` (not the input's fault). */
export const buildRace = (stderr: string): boolean => /SyntaxError: The requested module|ERR_MODULE_NOT_FOUND|Cannot find module|Unexpected end of input/.test(stderr);

/** runMinivmm, retried (up to 3 times, 2 s apart) while dist/ is mid-rebuild by someone else. */
export async function runStable<T extends { stderr: string }>(run: () => Promise<T>): Promise<T> {
  let r = await run();
  for (let i = 0; i < 3 && buildRace(r.stderr); i++) { await new Promise((res) => setTimeout(res, 2000)); r = await run(); }
  return r;
}
