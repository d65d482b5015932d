// A private copy of the build for long runs (the test suite, the soak, the benchmark). They start
// new images all the time (every cpr-exec, every transfer target, device daemons, conformance
// roles); loaded from dist/, one of them could meet a half-written file while `npm run build`
// rewrites it. A copy taken once at the start cannot change under them.
import { cpSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface BuildCopy {
  /** A directory laid out like the repository: bin/, dist/, package.json, node_modules (a link). */
  root: string;
  /** Its bin/minivmm.js. */
  bin: string;
  remove(): void;
}

/** Copies `repo`'s build into `into` (made here), or into a fresh directory under the temp dir. */
export function copyBuild(repo: string, into?: string): BuildCopy {
  if (!existsSync(join(repo, 'dist/cli/main.js'))) throw new Error(`${repo}/dist is not built (run npm run build)`);
  const root = into ?? mkdtempSync(join(tmpdir(), 'minivmm-build-'));
  mkdirSync(root, { recursive: true });
  cpSync(join(repo, 'dist'), join(root, 'dist'), { recursive: true });
  cpSync(join(repo, 'bin'), join(root, 'bin'), { recursive: true });
  copyFileSync(join(repo, 'package.json'), join(root, 'package.json')); // "type": "module" for dist/
  symlinkSync(join(repo, 'node_modules'), join(root, 'node_modules'));
  return { root, bin: join(root, 'bin/minivmm.js'), remove: () => rmSync(root, { recursive: true, force: true }) };
}
