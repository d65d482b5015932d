// tools/kernel (minivmm kernel-test): the parts that need no QEMU and no kernel build. The harness
// itself runs with `npm run test:kernel` (QEMU + a kernel build, minutes).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FRAGMENT, REQUIRED, REQUIRED_E2E, bootBudget, guestCmdline, hiddenInGuest, kernelKey, kernelTest, missingPackages, treeVersion } from '../tools/kernel/main.js';
import { vmPinKiB, vmPinUnderflowed } from '../tools/conformance/agent.js';

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

  it('cache key: stable, and changes with the fragment and the series files', () => {
    const t = fakeTree();
    const frag = join(tmp(), 'f.config');
    writeFileSync(frag, 'CONFIG_VDPA=y\n');
    const k1 = kernelKey(t, [frag]).hash;
    expect(kernelKey(t, [frag]).hash).toBe(k1);
    writeFileSync(frag, 'CONFIG_VDPA=y\nCONFIG_X=y\n');
    const k2 = kernelKey(t, [frag]).hash;
    expect(k2).not.toBe(k1);
    writeFileSync(join(t, 'drivers/vhost/vdpa.c'), 'int y;\n');
    expect(kernelKey(t, [frag]).hash).not.toBe(k2);
  });

  // git is how kernel trees arrive: a git that does not work here is a failure, not a quiet pass.
  it('cache key: git HEAD and uncommitted edits count', () => {
    const t = fakeTree();
    const frag = join(tmp(), 'f.config');
    writeFileSync(frag, 'CONFIG_VDPA=y\n');
    const git = (...a: string[]) => spawnSync('git', ['-C', t, '-c', 'user.email=t@t', '-c', 'user.name=t', ...a], { encoding: 'utf8' });
    for (const step of [['init', '-q'], ['add', '-A'], ['commit', '-qm', 'x']]) {
      const r = git(...step);
      expect(r.status, `git ${step.join(' ')}: ${r.error?.message ?? r.stderr}`).toBe(0);
    }
    const k4 = kernelKey(t, [frag]);
    expect(k4.head).toMatch(/^[0-9a-f]{40}$/);
    expect(k4.dirty).toBe(false);
    writeFileSync(join(t, 'Makefile'), `${readFileSync(join(t, 'Makefile'), 'utf8')}# edit\n`);
    const k5 = kernelKey(t, [frag]);
    expect(k5.dirty).toBe(true);
    expect(k5.hash).not.toBe(k4.hash);
  });

  it("the project's fragment sets every symbol the harness and its e2e stage require", () => {
    const text = readFileSync(FRAGMENT, 'utf8');
    for (const s of [...REQUIRED, ...REQUIRED_E2E]) {
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
    expect(await kernelTest(['--no-e2e', '--e2e-only'])).toBe(2);
    expect(await kernelTest(['--e2e-only', '--only', '1'])).toBe(2);
    expect(await kernelTest(['--dma', 'va,xx'])).toBe(2);
    expect(await kernelTest(['--append', 'a="b c"'])).toBe(2);
    expect(await kernelTest(['--help'])).toBe(0);
  });

  it('missing host tools are listed with the install command; apt-get runs only with --install-deps', async () => {
    // A PATH with nothing but a fake apt-get that records being run: every tool is missing.
    const bin = tmp();
    const ran = join(bin, 'apt-get-ran');
    writeFileSync(join(bin, 'apt-get'), `#!/bin/sh\necho "$@" >> ${ran}\n`, { mode: 0o755 });
    const saved = { PATH: process.env.PATH, XDG_CACHE_HOME: process.env.XDG_CACHE_HOME };
    const lines: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((s: string) => { lines.push(String(s)); return true; }) as typeof process.stdout.write;
    try {
      process.env.PATH = bin;
      process.env.XDG_CACHE_HOME = tmp();
      expect(missingPackages(false, false).map((m) => m.pkg).sort()).toEqual(['busybox-static', 'iproute2', 'qemu-system-x86']);
      expect(await kernelTest(['--kernel', '/etc/hostname'])).toBe(2);
      expect(existsSync(ran)).toBe(false);
      const msg = lines.join('');
      expect(msg).toContain('apt-get install -y --no-install-recommends qemu-system-x86 busybox-static iproute2');
      expect(msg).toContain('--install-deps');
      if (process.getuid?.() === 0) {
        // As root, --install-deps runs apt-get (here the fake one, which installs nothing: still missing).
        expect(await kernelTest(['--kernel', '/etc/hostname', '--install-deps'])).toBe(2);
        expect(readFileSync(ran, 'utf8')).toContain('install -y --no-install-recommends qemu-system-x86');
      }
    } finally {
      process.stdout.write = write;
      process.env.PATH = saved.PATH;
      if (saved.XDG_CACHE_HOME === undefined) delete process.env.XDG_CACHE_HOME; else process.env.XDG_CACHE_HOME = saved.XDG_CACHE_HOME;
    }
  });

  it('PA mode is vdpa_sim.use_va=0 on the guest command line; --append goes before init', () => {
    expect(guestCmdline('va', '')).not.toContain('use_va');
    const pa = guestCmdline('pa', 'foo=1');
    expect(pa).toMatch(/ vdpa_sim\.use_va=0 foo=1 init=\/bin\/sh -- \S+init\.sh$/);
  });

  it('the boot bound comes from the stages requested', () => {
    expect(bootBudget({ conformance: true, e2e: true })).toBeGreaterThan(bootBudget({ conformance: true, e2e: false }));
    expect(bootBudget({ conformance: false, e2e: true })).toBeLessThan(bootBudget({ conformance: true, e2e: true }));
  });

  it('paths the guest cannot see (tmpfs over /tmp, /run, /dev/shm) are named', () => {
    expect(hiddenInGuest(tmp())).toBe('/tmp');
    expect(hiddenInGuest('/usr')).toBe(null);
  });

  it('the e2e driver refuses bad arguments with one line and exit 2', () => {
    const e2e = join(import.meta.dirname, '../dist/tools/kernel/e2e.js');
    for (const args of [[], ['--net', '/dev/null', '--blk', '/dev/null'], ['--net', 'a', '--blk', 'b', '--dma', 'xx'], ['--bogus']]) {
      const r = spawnSync(process.execPath, [e2e, ...args], { encoding: 'utf8' });
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^e2e: .*\nusage: /);
    }
  });

  it('VmPin is read exactly, and a negative count printed unsigned is recognised', () => {
    expect(typeof vmPinKiB(process.pid)).toBe('bigint');
    expect(vmPinUnderflowed(18446744073709551612n)).toBe(true); // -4 kB as the kernel prints it
    expect(vmPinUnderflowed(262144n)).toBe(false);
  });
});
