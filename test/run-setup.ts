// vitest globalSetup: one private directory per test run, /tmp/minivmm-test-run-XXXXXX, with
//   build/  a copy of the build (tools/build-copy.ts): every VMM, device daemon and child role the
//           tests start runs from it, so rebuilding dist/ during a run cannot break the run;
//   tmp/    the run's TMPDIR: everything the tests and the code under test create there must be
//           gone after each test file (test/leftovers.ts); whatever is left at the end fails the run.
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { copyBuild } from '../tools/build-copy.js';
import { sweepLeftovers } from './leftovers.js';

export default function setup(): () => Promise<void> {
  const run = mkdtempSync(join(tmpdir(), 'minivmm-test-run-'));
  // Traversable by everyone: the security tests check that other users are refused by the
  // sockets' own modes, not by a directory they cannot enter.
  chmodSync(run, 0o755);
  const build = copyBuild(resolve(import.meta.dirname, '..'), join(run, 'build'));
  const tmp = join(run, 'tmp');
  mkdirSync(tmp);
  chmodSync(tmp, 0o755);
  process.env.TMPDIR = tmp;
  process.env.MINIVMM_TEST_BUILD = build.root;
  return async () => {
    const left = await sweepLeftovers(tmp, build.root, 0);
    rmSync(run, { recursive: true, force: true });
    if (left.length) {
      process.stderr.write(`\nthe test run left behind (now cleaned up):\n  ${left.join('\n  ')}\n`);
      process.exitCode = 1;
    }
  };
}
