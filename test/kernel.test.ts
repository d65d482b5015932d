// tools/kernel (minivmm kernel-test): the parts that need no QEMU and no kernel build. The harness
// itself runs with `npm run test:kernel` (QEMU + a kernel build, minutes).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FRAGMENT, REQUIRED, kernelKey, kernelTest, treeVersion } from '../tools/kernel/main.js';

const dirs: string[] = [];
const tmp = (): string => { const d = mkdtempSync(join(tmpdir(), 'minivmm-kernel-')); dirs.push(d); return d; };
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function fakeTree(extra = ''): string {
  const d = tmp();
  writeFileSync(join(d, 'Makefile'), `# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =${extra}\nNAME = Baby Opossum Posse\n`);
  mkdirSync(join(d, 'drivers/vhost'), { recursive: true });
  writeFileSync(join(d, 'drivers/vhost/vdpa.c'), 'int x;\n');
  return d;
}

describe('kernel-test harness (no QEMU)', () => {
  it('reads the tree version from the Makefile', () => {
    expect(treeVersion(fakeTree())).toBe('6.12.117');
    expect(treeVersion(fakeTree(' -rc3'))).toBe('6.12.117-rc3');
  });

  it('cache key: stable, and changes with the fragment, the series files and git state', () => {
    const t = fakeTree();
    const frag = join(tmp(), 'f.config');
    writeFileSync(frag, 'CONFIG_VDPA=y\n');
    const k1 = kernelKey(t, [frag]).hash;
    expect(kernelKey(t, [frag]).hash).toBe(k1);
    writeFileSync(frag, 'CONFIG_VDPA=y\nCONFIG_X=y\n');
    const k2 = kernelKey(t, [frag]).hash;
    expect(k2).not.toBe(k1);
    writeFileSync(join(t, 'drivers/vhost/vdpa.c'), 'int y;\n');
    const k3 = kernelKey(t, [frag]).hash;
    expect(k3).not.toBe(k2);
    const git = (...a: string[]) => spawnSync('git', ['-C', t, '-c', 'user.email=t@t', '-c', 'user.name=t', ...a], { stdio: 'ignore' }).status;
    if (git('init', '-q') === 0 && git('add', '-A') === 0 && git('commit', '-qm', 'x') === 0) {
      const k4 = kernelKey(t, [frag]);
      expect(k4.head).toMatch(/^[0-9a-f]{40}$/);
      expect(k4.dirty).toBe(false);
      writeFileSync(join(t, 'Makefile'), `${readFileSync(join(t, 'Makefile'), 'utf8')}# edit\n`);
      const k5 = kernelKey(t, [frag]);
      expect(k5.dirty).toBe(true);
      expect(k5.hash).not.toBe(k4.hash);
    }
  });

  it("the project's fragment sets every symbol the harness requires", () => {
    const text = readFileSync(FRAGMENT, 'utf8');
    for (const s of REQUIRED) {
      // MEMFD_CREATE and the like may come as dependencies, but the fragment names them all.
      expect(text, `CONFIG_${s}=y`).toContain(`\nCONFIG_${s}=y\n`);
    }
  });

  it('init.sh parses as a POSIX shell script', () => {
    const r = spawnSync('sh', ['-n', join(import.meta.dirname, '../tools/kernel/init.sh')], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('usage errors exit 2 before building anything; --help exits 0', async () => {
    expect(await kernelTest(['--bogus'])).toBe(2);
    expect(await kernelTest(['--kernel', '/nonexistent/bzImage'])).toBe(2);
    expect(await kernelTest(['--kernel', '/etc/hostname', '--source', '/'])).toBe(2);
    expect(await kernelTest(['--only', 'a,b'])).toBe(2);
    expect(await kernelTest(['--timeout', '0'])).toBe(2);
    expect(await kernelTest(['--help'])).toBe(0);
  });
});
