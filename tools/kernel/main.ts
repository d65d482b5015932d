// minivmm kernel-test: run the vhost-vdpa conformance suite (tools/conformance) and an end-to-end
// live update of minivmm itself (tools/kernel/e2e.ts) against a real kernel's vhost-vdpa +
// vdpa_sim, in QEMU with TCG (this machine's KVM cannot boot Linux).
//
//   minivmm kernel-test [--kernel BZIMAGE | --source DIR] [--fragment FILE] [--json OUT] [--dma va,pa]
//                       [--no-e2e | --e2e-only] [--append "..."] [--timeout SEC] [--only N,N,...]
//                       [--jobs N] [--rebuild] [--install-deps]
//   node dist/tools/kernel/main.js ...           (same, without the CLI)
//
// 1. Kernel: --kernel as given; --source DIR built with tools/kernel/vdpa-guest.config (plus
//    --fragment); neither: Debian's linux-source-6.12, unpacked under ~/.cache/minivmm/src/.
//    Built bzImages are cached in ~/.cache/minivmm/kernels/<hash>/, the hash covering the tree's
//    version, git HEAD and uncommitted diff, the files the live-update series touches, the
//    fragments and the compiler. Missing host tools are listed with the command that installs
//    them; only --install-deps runs apt-get.
// 2. One boot per vdpa_sim DMA mode (VA: the default; PA: vdpa_sim.use_va=0 on the command line):
//    qemu-system-x86_64 (TCG, -cpu max: AMD SVM for nested KVM), the host's / read-only over 9p as
//    the guest's root, this repo as its own 9p share (so any location works), a writable share for
//    guest.env and the reports, and tools/kernel/init.sh as init: it creates vdpa_sim net + blk
//    devices, runs the suite on each /dev/vhost-vdpa-N, then the end-to-end stage on both.
// 3. Verdict: the guest's lines are printed as they come, then one line per stage; the closing line
//    sums the suite's cases and the e2e stages. A panic, oops, BUG, WARNING, timeout, missing device
//    or missing report is a failure (counted as one failed case each, and named in a FAIL line).
//
// Logs of every run: ~/.cache/minivmm/kernel-test/<timestamp>/ (build.log, console-<dma>.log,
// results-<dma>/*.json, report.json); the path is printed first and last.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync, copyFileSync, createWriteStream, existsSync, mkdirSync, openSync, readFileSync, readdirSync, realpathSync,
  renameSync, rmSync, statSync, writeFileSync, writeSync, type WriteStream,
} from 'node:fs';
import { cpus, homedir } from 'node:os';
import { copyBuild } from '../build-copy.js';
import { dirname, join, resolve } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { E2eReport } from './e2e.js';

const HERE = dirname(fileURLToPath(import.meta.url));
/** The repository root: this file is dist/tools/kernel/main.js (or tools/kernel/main.ts under tsx). */
export const REPO = resolve(HERE, existsSync(join(HERE, '../../package.json')) ? '../..' : '../../..');
const SRC_DIR = join(REPO, 'tools', 'kernel');
export const FRAGMENT = join(SRC_DIR, 'vdpa-guest.config');
const INIT = join(SRC_DIR, 'init.sh');
const SUITE = join(REPO, 'dist', 'tools', 'conformance', 'main.js');
const DEBIAN_PKG = 'linux-source-6.12';
const DEBIAN_TARBALL = `/usr/src/${DEBIAN_PKG}.tar.xz`;
/** The devices the init creates: vdpa mgmtdev, device name. */
export const DEVICES: [mgmt: string, name: string][] = [['vdpasim_net', 'vdpa0'], ['vdpasim_blk', 'vdpa1']];
/** Symbols without which the run means nothing: checked in the merged .config before building. */
export const REQUIRED = ['VDPA', 'VDPA_SIM', 'VDPA_SIM_NET', 'VDPA_SIM_BLOCK', 'VHOST_VDPA', 'VIRTIO_PCI', 'NET_9P_VIRTIO',
  '9P_FS', 'SERIAL_8250_CONSOLE', 'PROC_FS', 'SYSFS', 'DEVTMPFS', 'TMPFS', 'EVENTFD', 'EPOLL', 'FUTEX', 'UNIX',
  'CROSS_MEMORY_ATTACH', 'MEMFD_CREATE', 'BINFMT_ELF', 'BINFMT_SCRIPT', 'MULTIUSER', 'POSIX_TIMERS', '64BIT'];
/** What the end-to-end stage needs on top: KVM inside the guest (nested SVM under TCG's -cpu max). */
export const REQUIRED_E2E = ['VIRTUALIZATION', 'KVM', 'KVM_AMD', 'X86_LOCAL_APIC', 'CPU_SUP_AMD', 'HIGH_RES_TIMERS'];
/** The guest's init mounts tmpfs over these: host files under them are invisible inside. */
const HIDDEN_IN_GUEST = ['/tmp', '/run', '/dev/shm'];
/** Files of the live-update series (and their neighbours): hashed into the cache key for any tree. */
const SERIES_FILES = ['drivers/vhost/vdpa.c', 'drivers/vhost/vhost.c', 'drivers/vhost/vhost.h', 'drivers/vhost/iotlb.c',
  'include/uapi/linux/vhost.h', 'include/uapi/linux/vhost_types.h', 'include/linux/vdpa.h', 'include/linux/vhost_iotlb.h',
  'drivers/vdpa/vdpa.c', 'drivers/vdpa/vdpa_sim/vdpa_sim.c', 'drivers/vdpa/vdpa_sim/vdpa_sim.h',
  'drivers/vdpa/vdpa_sim/vdpa_sim_net.c', 'drivers/vdpa/vdpa_sim/vdpa_sim_blk.c'];
/** Host tools and the Debian packages that provide them (installed with apt only under --install-deps). */
const TOOLS: [probe: string, pkg: string][] = [
  ['qemu-system-x86_64', 'qemu-system-x86'], ['make', 'make'], ['gcc', 'gcc'], ['flex', 'flex'], ['bison', 'bison'],
  ['bc', 'bc'], ['cpio', 'cpio'], ['xz', 'xz-utils'], ['/usr/include/libelf.h', 'libelf-dev'],
  ['/usr/include/openssl/ssl.h', 'libssl-dev'], ['busybox', 'busybox-static'], ['vdpa', 'iproute2'],
];

export class KernelTestError extends Error {}

export type Dma = 'va' | 'pa';
interface Options {
  kernel?: string; source?: string; fragment?: string; json?: string; timeout?: number;
  only?: string; jobs: number; rebuild: boolean; installDeps: boolean;
  conformance: boolean; e2e: boolean; dma: Dma[]; append: string;
}

const USAGE = `usage: minivmm kernel-test [--kernel BZIMAGE | --source DIR] [--fragment FILE] [--json OUT] [--dma va,pa]
                          [--no-e2e | --e2e-only] [--append "..."] [--timeout SEC] [--only N,N,...]
                          [--jobs N] [--rebuild] [--install-deps]
  --kernel BZIMAGE  boot this kernel (it must have the options of tools/kernel/vdpa-guest.config)
  --source DIR      build DIR (a kernel tree, e.g. with the live-update patches) and boot it
  (neither)         build and boot Debian's ${DEBIAN_PKG}: the upstream baseline
  --fragment FILE   extra Kconfig fragment merged after tools/kernel/vdpa-guest.config
  --json OUT        write the combined report (suite per device and mode, e2e, verdict, paths) to OUT
  --dma va,pa       vdpa_sim DMA modes, one boot each (default both; pa boots with vdpa_sim.use_va=0)
  --no-e2e          skip the end-to-end live-update stage; --e2e-only: skip the conformance suite
  --append "..."    extra guest kernel parameters (e.g. "vhost_iotlb.max_iotlb_entries=4096")
  --timeout SEC     bound on each boot (default: sized from the stages: 120 s + 600 s per suite
                    run + 1200 s for the e2e stage); each stage also has its own bound
  --only N,N,...    run only these conformance cases
  --jobs N          make -jN (default: the number of CPUs)
  --rebuild         build even if the cache has this kernel
  --install-deps    apt-get install missing host tools and ${DEBIAN_PKG} (as root); without it
                    they are listed with the command to install them
Cache and logs: \${XDG_CACHE_HOME:-~/.cache}/minivmm/ (kernels/, src/, kernel-test/<timestamp>/)`;

function parseOptions(args: string[]): Options | null {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args, strict: true,
      options: {
        kernel: { type: 'string' }, source: { type: 'string' }, fragment: { type: 'string' }, json: { type: 'string' },
        timeout: { type: 'string' }, only: { type: 'string' }, jobs: { type: 'string', short: 'j' }, rebuild: { type: 'boolean' },
        'install-deps': { type: 'boolean' }, 'no-e2e': { type: 'boolean' }, 'e2e-only': { type: 'boolean' },
        dma: { type: 'string' }, append: { type: 'string' }, help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) { throw new KernelTestError((e as Error).message.split('\n')[0]); }
  if (values.help) return null;
  const str = (k: string): string | undefined => values[k] as string | undefined;
  const o: Options = {
    kernel: str('kernel') && resolve(str('kernel')!), source: str('source') && resolve(str('source')!),
    fragment: str('fragment') && resolve(str('fragment')!), json: str('json') && resolve(str('json')!),
    timeout: str('timeout') === undefined ? undefined : Number(str('timeout')), only: str('only'),
    jobs: str('jobs') === undefined ? Math.max(1, cpus().length) : Number(str('jobs')), rebuild: values.rebuild === true,
    installDeps: values['install-deps'] === true, conformance: values['e2e-only'] !== true, e2e: values['no-e2e'] !== true,
    dma: [], append: str('append') ?? '',
  };
  for (const d of (str('dma') ?? 'va,pa').split(',')) {
    if (d !== 'va' && d !== 'pa') throw new KernelTestError(`--dma ${str('dma')}: va, pa or va,pa`);
    if (!o.dma.includes(d)) o.dma.push(d);
  }
  if (values['no-e2e'] && values['e2e-only']) throw new KernelTestError('--no-e2e and --e2e-only exclude each other');
  if (o.only && !o.conformance) throw new KernelTestError('--only selects conformance cases: not with --e2e-only');
  if (/[\n'"\\]/.test(o.append)) throw new KernelTestError('--append: kernel parameters without quotes, backslashes or line breaks');
  if (o.kernel && o.source) throw new KernelTestError('--kernel and --source exclude each other');
  if (o.kernel && o.fragment) throw new KernelTestError('--fragment applies to a build (--source or the default), not to --kernel');
  if (o.timeout !== undefined && !(o.timeout > 0)) throw new KernelTestError('--timeout: a positive number of seconds');
  if (!(Number.isInteger(o.jobs) && o.jobs > 0)) throw new KernelTestError('--jobs: a positive integer');
  if (o.only && !/^\d+(,\d+)*$/.test(o.only)) throw new KernelTestError(`--only ${o.only}: case numbers, comma-separated`);
  if (o.kernel && !existsSync(o.kernel)) throw new KernelTestError(`--kernel ${o.kernel} does not exist`);
  if (o.source && !existsSync(join(o.source, 'Makefile'))) throw new KernelTestError(`--source ${o.source}: no Makefile there (not a kernel tree)`);
  if (o.fragment && !existsSync(o.fragment)) throw new KernelTestError(`--fragment ${o.fragment} does not exist`);
  return o;
}

/** Stage bounds (s): the guest must reach init, each suite run and the e2e stage must finish within these. */
// Generous: measured on a loaded 2-core machine, a suite run took up to 195 s (patched, VA, net)
// and the e2e stage up to ~400 s (patched, PA, 9 updates).
export const STAGE_SECONDS = { boot: 120, conformance: 600, e2e: 1200 } as const;
/** The default bound on one boot, from the stages it runs. */
export function bootBudget(o: { conformance: boolean; e2e: boolean }): number {
  return STAGE_SECONDS.boot + (o.conformance ? DEVICES.length * STAGE_SECONDS.conformance : 0) + (o.e2e ? STAGE_SECONDS.e2e : 0);
}

// ---------------------------------------------------------------------------------------------
// Output

const t0 = Date.now();
const secs = (from = t0): string => `${((Date.now() - from) / 1000).toFixed(1)} s`;
let out: (line: string) => void = (line) => { process.stdout.write(`${line}\n`); };
const say = (msg: string): void => out(`kernel-test: ${msg}`);

export function cacheRoot(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'minivmm');
}

// ---------------------------------------------------------------------------------------------
// Host tools

function have(probe: string): boolean {
  if (probe.startsWith('/')) return existsSync(probe);
  return spawnSync('/bin/sh', ['-c', `command -v ${probe}`], { stdio: 'ignore' }).status === 0;
}

/** The Debian packages this run needs and lacks (tools, and the kernel source when it builds Debian's). */
export function missingPackages(build: boolean, debian: boolean): { what: string; pkg: string }[] {
  const needed = build ? TOOLS : TOOLS.filter(([p]) => ['qemu-system-x86_64', 'vdpa', 'busybox'].includes(p));
  const miss = needed.filter(([p]) => !have(p)).map(([what, pkg]) => ({ what, pkg }));
  if (debian && !existsSync(DEBIAN_TARBALL)) miss.push({ what: DEBIAN_TARBALL, pkg: DEBIAN_PKG });
  return miss;
}

/** Missing packages: listed with the command that installs them, or installed with --install-deps. */
function ensurePackages(build: boolean, debian: boolean, install: boolean): void {
  const miss = missingPackages(build, debian);
  if (!miss.length) return;
  const pkgs = [...new Set(miss.map((m) => m.pkg))];
  const cmd = `apt-get update && apt-get install -y --no-install-recommends ${pkgs.join(' ')}`;
  const list = miss.map((m) => `${m.what} (${m.pkg})`).join(', ');
  if (!install) throw new KernelTestError(`missing: ${list}. Install them with: ${cmd}  (or run kernel-test with --install-deps)`);
  if (process.getuid?.() !== 0 || !have('apt-get')) throw new KernelTestError(`--install-deps needs root and apt-get; missing: ${list}. Install them with: ${cmd}`);
  say(`--install-deps: ${cmd}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update'], { stdio: 'ignore', env });
  const r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs], { stdio: ['ignore', 'ignore', 'pipe'], env });
  if (r.status !== 0) throw new KernelTestError(`apt-get install ${pkgs.join(' ')} failed: ${r.stderr.toString().trim().split('\n').pop()}`);
  const still = missingPackages(build, debian);
  if (still.length) throw new KernelTestError(`still missing after apt-get install: ${still.map((m) => m.what).join(', ')}`);
}

/** A path the guest cannot see (its init mounts tmpfs over /tmp, /run, /dev/shm), or null. */
export function hiddenInGuest(path: string): string | null {
  const p = realpathSync(path);
  return HIDDEN_IN_GUEST.find((h) => p === h || p.startsWith(`${h}/`)) ?? null;
}

// ---------------------------------------------------------------------------------------------
// Kernel: source, cache key, build

function sha(data: string | Buffer): string { return createHash('sha256').update(data).digest('hex'); }

function git(dir: string, args: string[]): string | null {
  const r = spawnSync('git', ['-C', dir, ...args], { encoding: 'buffer', maxBuffer: 1 << 30 });
  return r.status === 0 ? r.stdout.toString() : null;
}

/** "6.12.117" + EXTRAVERSION from the top Makefile. */
export function treeVersion(dir: string): string {
  const mk = readFileSync(join(dir, 'Makefile'), 'utf8');
  const v = (k: string): string => new RegExp(`^${k}[ \\t]*=[ \\t]*(.*)$`, 'm').exec(mk)?.[1].trim() ?? '';
  return `${v('VERSION')}.${v('PATCHLEVEL')}.${v('SUBLEVEL')}${v('EXTRAVERSION')}`;
}

/** The cache key of a build: tree version, git state, series files, fragments, compiler. */
export function kernelKey(dir: string, fragments: string[]): { hash: string; version: string; head: string | null; dirty: boolean } {
  const version = treeVersion(dir);
  const isGit = existsSync(join(dir, '.git'));
  const head = isGit ? git(dir, ['rev-parse', 'HEAD'])?.trim() ?? null : null;
  const diff = isGit ? git(dir, ['diff', 'HEAD']) ?? '' : '';
  const h = createHash('sha256');
  h.update(`minivmm-kernel-key 1\nversion ${version}\nhead ${head}\ndiff ${sha(diff)}\n`);
  for (const f of SERIES_FILES) {
    const p = join(dir, f);
    h.update(`file ${f} ${existsSync(p) ? sha(readFileSync(p)) : '-'}\n`);
  }
  for (const f of fragments) h.update(`fragment ${sha(readFileSync(f))}\n`);
  const cc = spawnSync('gcc', ['--version'], { encoding: 'utf8' }).stdout?.split('\n')[0] ?? '';
  h.update(`cc ${cc}\n`);
  return { hash: h.digest('hex').slice(0, 16), version, head, dirty: diff.length > 0 };
}

/** Debian's linux-source-6.12, unpacked (once per tarball) under ~/.cache/minivmm/src/. */
function debianSource(): string {
  if (!existsSync(DEBIAN_TARBALL)) throw new KernelTestError(`${DEBIAN_TARBALL} is missing (apt-get install ${DEBIAN_PKG}, or --install-deps)`);
  const st = statSync(DEBIAN_TARBALL);
  const stamp = `${DEBIAN_TARBALL} ${st.size} ${st.mtimeMs}\n`;
  const base = join(cacheRoot(), 'src');
  const dir = join(base, DEBIAN_PKG);
  const marker = join(dir, '.minivmm-unpacked');
  if (existsSync(marker) && readFileSync(marker, 'utf8') === stamp) return dir;
  const t = Date.now();
  say(`unpacking ${DEBIAN_TARBALL} into ${base}/`);
  mkdirSync(base, { recursive: true });
  const tmp = join(base, `.unpack-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  const r = spawnSync('tar', ['-xJf', DEBIAN_TARBALL, '-C', tmp], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new KernelTestError(`tar -xJf ${DEBIAN_TARBALL} failed: ${r.stderr.toString().trim()}`);
  const top = join(tmp, DEBIAN_PKG);
  if (!existsSync(join(top, 'Makefile'))) throw new KernelTestError(`${DEBIAN_TARBALL} has no ${DEBIAN_PKG}/Makefile`);
  writeFileSync(join(top, '.minivmm-unpacked'), stamp);
  rmSync(dir, { recursive: true, force: true });
  renameSync(top, dir);
  rmSync(tmp, { recursive: true, force: true });
  say(`unpacked in ${secs(t)}`);
  return dir;
}

/** An exclusive lock file held by this process (a build directory is not shareable). */
async function lock(path: string): Promise<() => void> {
  for (let waited = 0; ; waited++) {
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(readFileSync(path, 'utf8').trim());
      let alive = false;
      try { process.kill(pid, 0); alive = pid > 0; } catch { alive = false; }
      if (!alive) { rmSync(path, { force: true }); continue; }
      if (waited === 0) say(`waiting for process ${pid}, which holds ${path}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/** Run a command, appending its output to the build log; resolve with the exit status. */
function runLogged(cmd: string, args: string[], cwd: string, log: WriteStream, onLine?: (l: string) => void): Promise<number> {
  log.write(`\n$ (cd ${cwd} && ${cmd} ${args.join(' ')})\n`);
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '';
    const take = (d: Buffer): void => {
      log.write(d);
      if (!onLine) return;
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) onLine(l);
    };
    p.stdout.on('data', take);
    p.stderr.on('data', take);
    p.on('error', rej);
    p.on('close', (code, sig) => res(code ?? (sig ? 128 : 1)));
  });
}

function tail(path: string, n: number): string {
  try { return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-n).join('\n'); } catch { return ''; }
}

/** Symbols set to y in a fragment. */
function fragmentSymbols(path: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const r = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/.exec(line.trim());
    if (r) m.set(r[1], r[2]);
  }
  return m;
}

interface Built { bzImage: string; hash: string; version: string; cached: boolean; buildSeconds: number }

async function buildKernel(src: string, fragments: string[], o: Options, runDir: string): Promise<Built> {
  const key = kernelKey(src, fragments);
  const root = join(cacheRoot(), 'kernels');
  const dir = join(root, key.hash);
  const bz = join(dir, 'bzImage');
  const desc = `${key.version}${key.head ? ` (git ${key.head.slice(0, 12)}${key.dirty ? ' + uncommitted changes' : ''})` : ''}`;
  mkdirSync(root, { recursive: true });
  if (existsSync(bz) && !o.rebuild) {
    say(`kernel ${desc} from ${src}: cached ${bz}`);
    writeFileSync(join(runDir, 'build.log'), `cached: ${bz}\n${tail(join(dir, 'build.log'), 5)}\n`);
    return { bzImage: bz, hash: key.hash, version: key.version, cached: true, buildSeconds: 0 };
  }
  // One object directory per source tree (not per key): a patched tree rebuilds incrementally.
  const objDir = join(root, `obj-${sha(realpathSync(src)).slice(0, 12)}`);
  mkdirSync(objDir, { recursive: true });
  const unlock = await lock(join(objDir, '.lock'));
  const logPath = join(runDir, 'build.log');
  const log = createWriteStream(logPath);
  const t = Date.now();
  try {
    say(`building kernel ${desc} from ${src} (make -j${o.jobs}, objects in ${objDir}, log ${logPath})`);
    const make = async (what: string, args: string[], onLine?: (l: string) => void): Promise<void> => {
      const rc = await runLogged('make', ['-C', src, `O=${objDir}`, ...args], src, log, onLine);
      if (rc !== 0) throw new KernelTestError(`${what} failed (exit ${rc}); last lines of ${logPath}:\n${tail(logPath, 25)}`);
    };
    await make('make tinyconfig', ['tinyconfig']);
    const rc = await runLogged(join(src, 'scripts/kconfig/merge_config.sh'), ['-m', '-O', objDir, join(objDir, '.config'), ...fragments], src, log);
    if (rc !== 0) throw new KernelTestError(`merge_config.sh failed (exit ${rc}); see ${logPath}`);
    await make('make olddefconfig', ['olddefconfig']);
    const cfg = readFileSync(join(objDir, '.config'), 'utf8');
    const isSet = (s: string, v: string): boolean => cfg.includes(`\nCONFIG_${s}=${v}\n`) || (v === 'n' && cfg.includes(`\n# CONFIG_${s} is not set\n`));
    const lost = fragments.flatMap((f) => [...fragmentSymbols(f)].filter(([s, v]) => v !== 'n' && !isSet(s, v)).map(([s, v]) => `CONFIG_${s}=${v}`));
    if (lost.length) say(`note: not in the final .config (dependencies or not in this tree): ${lost.join(' ')}`);
    const missing = REQUIRED.filter((s) => !isSet(s, 'y'));
    if (missing.length) throw new KernelTestError(`the merged .config lacks ${missing.map((s) => `CONFIG_${s}=y`).join(' ')} (see ${logPath})`);
    const noKvm = REQUIRED_E2E.filter((s) => !isSet(s, 'y'));
    if (noKvm.length && o.e2e) throw new KernelTestError(`the merged .config lacks ${noKvm.map((s) => `CONFIG_${s}=y`).join(' ')}, which the e2e stage needs for KVM in the guest (see ${logPath}; or --no-e2e)`);
    let compiled = 0, last = Date.now();
    await make(`make -j${o.jobs} bzImage`, [`-j${o.jobs}`, 'bzImage'], (l) => {
      if (/^\s+(CC|AS|LD|AR)\s/.test(l)) compiled++;
      if (Date.now() - last >= 30_000) { last = Date.now(); say(`  building: ${secs(t)}, ${compiled} objects`); }
    });
    const img = join(objDir, 'arch/x86/boot/bzImage');
    if (!existsSync(img)) throw new KernelTestError(`no ${img} after the build; see ${logPath}`);
    mkdirSync(dir, { recursive: true });
    copyFileSync(join(objDir, '.config'), join(dir, 'config'));
    log.end();
    await new Promise<void>((r) => log.on('close', () => r()));
    copyFileSync(logPath, join(dir, 'build.log'));
    writeFileSync(join(dir, 'info.json'), `${JSON.stringify({ source: src, ...key, fragments, builtAt: new Date().toISOString(), seconds: (Date.now() - t) / 1000 }, null, 2)}\n`);
    copyFileSync(img, `${bz}.tmp`);
    renameSync(`${bz}.tmp`, bz);
    say(`built ${bz} in ${secs(t)} (${(statSync(bz).size / 2 ** 20).toFixed(1)} MiB)`);
    return { bzImage: bz, hash: key.hash, version: key.version, cached: false, buildSeconds: (Date.now() - t) / 1000 };
  } finally {
    if (!log.closed) log.end();
    unlock();
  }
}

// ---------------------------------------------------------------------------------------------
// Boot and run

interface SuiteReport { device: string; passed: number; failed: number; skipped: number; cases: { id: number; result: string }[]; [k: string]: unknown }
interface DeviceRun { name: string; mgmt: string; dma: Dma; node?: string; exit?: number; report?: SuiteReport; problem?: string; seconds?: number }
interface E2eRun { dma: Dma; exit?: number; seconds?: number; report?: E2eReport; problem?: string; started: boolean }
interface Boot { dma: Dma; devices: DeviceRun[]; e2e?: E2eRun; problems: string[]; bootSeconds?: number; seconds: number; ended: boolean }

const KERNEL_TROUBLE = /Kernel panic|BUG: |Oops|general protection fault|WARNING: CPU|Call Trace:|soft lockup|hung_task|blocked for more than/;

/** The guest kernel's command line for one DMA mode (vdpa_sim is built in: its parameter goes here). */
export function guestCmdline(dma: Dma, extra: string): string {
  return ['console=ttyS0', 'panic=-1', 'oops=panic', 'root=hostroot', 'rootfstype=9p',
    'rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose', 'ro',
    ...(dma === 'pa' ? ['vdpa_sim.use_va=0'] : []), ...(extra ? [extra] : []), 'init=/bin/sh', '--', INIT].join(' ');
}

async function bootAndRun(bzImage: string, o: Options, runDir: string, dma: Dma): Promise<Boot> {
  const results = join(runDir, `results-${dma}`);
  mkdirSync(results, { recursive: true });
  const repo = realpathSync(REPO);
  // The guest runs from a copy of the build kept in this run's results share: a rebuild of dist/
  // during the run (minutes) cannot change what the suite's roles and the VMMs load. The copy's
  // node_modules is a link into the repo, which the guest sees at its own path (its own share).
  copyBuild(repo, join(results, 'minivmm-build'));
  const env = {
    MINIVMM_REPO: repo, MINIVMM_BUILD: '/run/results/minivmm-build', MINIVMM_NODE: process.execPath, MINIVMM_DMA: dma,
    MINIVMM_DEVICES: DEVICES.map(([m, n]) => `${m}:${n}`).join(' '),
    MINIVMM_STAGES: [o.conformance ? 'conformance' : '', o.e2e ? 'e2e' : ''].filter(Boolean).join(' '),
    MINIVMM_SUITE_ARGS: o.only ? `--only ${o.only}` : '',
  };
  writeFileSync(join(results, 'guest.env'), Object.entries(env).map(([k, v]) => `${k}='${v.replace(/'/g, `'\\''`)}'\n`).join(''));
  // 3 GiB: two VMM processes (cpr-transfer) with a 256 MiB nested guest, PA pinning, node, tmpfs.
  const args = ['-accel', 'tcg,thread=multi', '-cpu', 'max', '-m', o.e2e ? '3G' : '2G', '-smp', '2', '-nographic', '-no-reboot', '-nic', 'none',
    '-kernel', bzImage, '-append', guestCmdline(dma, o.append),
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    // the repo on its own share, mounted at the same path: visible even under /tmp (tmpfs in the guest)
    '-virtfs', `local,path=${repo},mount_tag=repo,security_model=none,readonly=on,multidevs=remap`,
    '-virtfs', `local,path=${results},mount_tag=results,security_model=none,multidevs=remap`];
  writeFileSync(join(runDir, `qemu-${dma}.cmdline`), `qemu-system-x86_64 ${args.map((a) => (/[\s"']/.test(a) ? `'${a}'` : a)).join(' ')}\n`);
  const consolePath = join(runDir, `console-${dma}.log`);
  const consoleLog = createWriteStream(consolePath);
  const boot: Boot = { dma, devices: DEVICES.map(([mgmt, name]) => ({ name, mgmt, dma })), problems: [], seconds: 0, ended: false };
  if (o.e2e) boot.e2e = { dma, started: false };
  const byName = (n: string): DeviceRun | undefined => boot.devices.find((d) => d.name === n);
  const t = Date.now();
  let current: DeviceRun | undefined;
  let inE2e = false;
  let runStart = 0;
  let lastLines: string[] = [];
  // Each stage has its own bound, armed when it starts; --timeout bounds the whole boot.
  let stage = 'boot', stageEnd = t + STAGE_SECONDS.boot * 1000;
  const arm = (name: string, seconds: number): void => { stage = name; stageEnd = Date.now() + seconds * 1000; };
  const total = o.timeout ?? bootBudget(o);
  say(`[${dma.toUpperCase()}] booting ${bzImage} in QEMU (TCG)${dma === 'pa' ? ' with vdpa_sim.use_va=0' : ''}, bound ${total} s; console ${consolePath}`);

  const onLine = (raw: string): void => {
    const line = raw.replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    lastLines.push(line);
    if (lastLines.length > 40) lastLines = lastLines.slice(-40);
    const m = /^@@minivmm (\S+) ?(.*)$/.exec(line);
    if (m) {
      const [, what, rest] = m;
      const w = rest.split(' ');
      if (what === 'booted') { boot.bootSeconds = (Date.now() - t) / 1000; say(`booted ${w[0]} in ${secs(t)}`); arm('setup', STAGE_SECONDS.boot); }
      else if (what === 'kvm') say(`guest KVM: ${rest}`);
      else if (what === 'device') { const d = byName(w[0]); if (d) d.node = w[2]; say(`created ${w[0]} (${w[1]}): ${w[2]}`); }
      else if (what === 'nodevice') { const d = byName(w[0]); if (d) d.problem = `not created: ${w.slice(2).join(' ')}`; say(`FAIL: device ${w[0]} (${w[1]}) ${w.slice(2).join(' ')}`); }
      else if (what === 'nodes') say(`device nodes: ${rest.trim() || 'none'}`);
      else if (what === 'mgmtdevs') { /* console.log has it */ }
      else if (what === 'run') { current = byName(w[0]); runStart = Date.now(); arm(`conformance on ${w[0]}`, STAGE_SECONDS.conformance); say(`[${dma.toUpperCase()}] running the conformance suite on ${w[0]} ${w[1]}`); }
      else if (what === 'exit') {
        const d = byName(w[0]);
        if (d) { d.exit = Number(w[1]); d.seconds = (Date.now() - runStart) / 1000; }
        say(`${w[0]}: suite exited with status ${w[1]} after ${secs(runStart)}`);
        current = undefined;
        arm('setup', STAGE_SECONDS.boot);
      } else if (what === 'e2e-run') {
        if (boot.e2e) boot.e2e.started = true;
        inE2e = true; runStart = Date.now(); arm('e2e', STAGE_SECONDS.e2e);
        say(`[${dma.toUpperCase()}] end-to-end stage: minivmm on ${rest}`);
      } else if (what === 'e2e-exit') {
        if (boot.e2e) { boot.e2e.exit = Number(w[0]); boot.e2e.seconds = (Date.now() - runStart) / 1000; }
        inE2e = false;
        arm('power-off', STAGE_SECONDS.boot);
      } else if (what === 'e2e-skip') {
        if (boot.e2e) boot.e2e.problem = `not run: ${rest}`;
        say(`FAIL: e2e: not run: ${rest}`);
      } else if (what === 'end') boot.ended = true;
      else if (what === 'error') say(`FAIL: guest init: ${rest}`), boot.problems.push(`guest init: ${rest}`);
      return;
    }
    const kernel = /^\[\s*\d+\.\d+\]/.test(line);
    if (KERNEL_TROUBLE.test(line)) {
      if (!boot.problems.some((p) => p.startsWith('kernel:'))) boot.problems.push(`kernel: ${line.replace(/^\[\s*\d+\.\d+\]\s*/, '')}`);
      out(`kernel-test: kernel: ${line}`);
      return;
    }
    if (current && !kernel) out(/^\d+ passed, \d+ failed, \d+ skipped$/.test(line) ? `${current.name} [${dma.toUpperCase()}]: ${line}` : line);
    else if (inE2e && !kernel) out(line);
  };

  const code = await new Promise<number | null>((res) => {
    const q = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let buf = '';
    const utf8 = new StringDecoder('utf8');
    const take = (d: Buffer): void => {
      consoleLog.write(d);
      buf += utf8.write(d);
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) onLine(l);
    };
    q.stdout.on('data', take);
    q.stderr.on('data', (d: Buffer) => { consoleLog.write(d); for (const l of d.toString().split('\n')) if (l.trim()) out(`kernel-test: qemu: ${l}`); });
    const stop = (why: string): void => {
      boot.problems.push(`timeout: ${why}`);
      say(`FAIL: timeout: ${why}; stopping QEMU`);
      q.kill('SIGTERM');
      setTimeout(() => q.kill('SIGKILL'), 5000).unref();
    };
    const watchdog = setInterval(() => {
      if (Date.now() > t + total * 1000) { clearInterval(watchdog); stop(`the boot did not end within ${total} s (hang?)`); }
      else if (Date.now() > stageEnd) { clearInterval(watchdog); stop(`${stage} did not finish within its bound (hang?)`); }
    }, 1000);
    q.on('error', (e) => { clearInterval(watchdog); boot.problems.push(`qemu: ${e.message}`); res(null); });
    q.on('close', (c) => { clearInterval(watchdog); if (buf) onLine(buf); res(c); });
  });
  consoleLog.end();
  await new Promise<void>((r) => consoleLog.on('close', () => r()));
  boot.seconds = (Date.now() - t) / 1000;
  if (code !== 0 && code !== null && !boot.problems.length) boot.problems.push(`qemu exited with status ${code}`);
  if (!boot.ended && !boot.problems.length) boot.problems.push(`the guest stopped before the end of its init (see ${consolePath})`);
  if (boot.bootSeconds === undefined && boot.problems.length) {
    say(`the guest never reached init; last console lines:\n${lastLines.slice(-20).join('\n')}`);
  }
  if (o.conformance) {
    for (const d of boot.devices) {
      const jsonPath = join(results, `${d.name}.json`);
      if (existsSync(jsonPath)) {
        try { d.report = JSON.parse(readFileSync(jsonPath, 'utf8')) as SuiteReport; } catch (e) { d.problem ??= `unreadable report ${jsonPath}: ${(e as Error).message}`; }
      }
      if (!d.report) {
        d.problem ??= d.node === undefined ? 'no device (never created, or the guest stopped first)'
          : d.exit === undefined ? 'the suite did not finish' : `the suite wrote no report (exit status ${d.exit})`;
      } else if (d.exit !== undefined && d.exit !== 0 && d.report.failed === 0) {
        d.problem = `the suite exited with status ${d.exit} with no failed case`;
      }
    }
  }
  if (boot.e2e) {
    const e = boot.e2e;
    const jsonPath = join(results, 'e2e.json');
    if (existsSync(jsonPath)) {
      try { e.report = JSON.parse(readFileSync(jsonPath, 'utf8')) as E2eReport; } catch (err) { e.problem ??= `unreadable report ${jsonPath}: ${(err as Error).message}`; }
    }
    if (!e.report) e.problem ??= !e.started ? 'never started (the guest stopped first)' : e.exit === undefined ? 'did not finish' : `wrote no report (exit status ${e.exit})`;
    else if (e.exit !== 0 && e.report.verdict === 'pass') e.problem = `exited with status ${e.exit} with a passing report`;
  }
  return boot;
}

// ---------------------------------------------------------------------------------------------

function staleDist(): string | null {
  const conf = join(REPO, 'tools', 'conformance');
  if (!existsSync(SUITE)) return `${SUITE} is missing: run npm run build`;
  const built = statSync(SUITE).mtimeMs;
  try {
    for (const f of readdirSync(conf)) {
      if (f.endsWith('.ts') && statSync(join(conf, f)).mtimeMs > built) return `tools/conformance/${f} is newer than dist/: the guest runs the old build (npm run build)`;
    }
  } catch { /* no sources: a packaged install */ }
  return null;
}

export interface KernelTestReport {
  passed: number; failed: number; skipped: number; verdict: 'pass' | 'fail';
  kernel: { bzImage: string; source?: string; version?: string; hash?: string; cached?: boolean; buildSeconds?: number };
  runDir: string; boots: { dma: Dma; bootSeconds?: number; seconds: number }[]; totalSeconds: number;
  problems: string[];
  devices: { name: string; mgmt: string; dma: Dma; node?: string; exit?: number; seconds?: number; problem?: string; report?: SuiteReport }[];
  /** The end-to-end stage, one entry per DMA mode. */
  e2e: (E2eReport & { seconds_host?: number; problem?: string })[];
}

/** One line per e2e stage: path, updates, loss, blocks, VmPin, blackout vs the guest's gap. */
function e2eLine(r: E2eReport): string {
  const done = r.updates.filter((u) => u.status === 'completed');
  const paths = [...new Set(done.map((u) => `${u.mode} ${u.path}`))].map((p) => `${done.filter((u) => `${u.mode} ${u.path}` === p).length}x ${p}`).join(', ');
  const rb = r.updates.filter((u) => u.rolled_back).length, refused = r.updates.filter((u) => u.intent === 'refused' && u.status === 'failed').length;
  const pins = [...new Set(r.updates.map((u) => `${u.vmpin_before}->${u.vmpin_after}`))].join(' ');
  const worst = Math.max(0, ...done.map((u) => u.downtime_ms ?? 0));
  const gap = Math.max(0, ...done.map((u) => u.guest_gap_ms ?? 0));
  return `${paths || 'no update'}${rb ? `, ${rb} rolled back` : ''}${refused ? `, ${refused} transfer refused` : ''}; ` +
    `net ${r.net?.received ?? 0} frames, ${r.net?.lost ?? '?'} lost/${r.net?.duplicated ?? '?'} dup/${r.net?.corrupt ?? '?'} corrupt; ` +
    `blk ${r.blk?.verified ?? 0} verified, ${r.blk?.mismatches ?? '?'} mismatches; VmPin kB ${pins}; ` +
    `longest blackout ${worst.toFixed(0)} ms, guest's longest gap around an update ${gap.toFixed(0)} ms (${r.guest_gap_before_updates_ms?.toFixed(0) ?? '?'} ms with none)` +
    `${r.ratio_fallback_to_new_owner !== null ? `; fallback/new-owner blackout ${r.ratio_fallback_to_new_owner}, devices phase ${r.ratio_devices_phase ?? '?'}` : ''}`;
}

/** `minivmm kernel-test ARGS`: returns the exit status (0 pass, 1 fail, 2 usage or set-up error). */
export async function kernelTest(args: string[]): Promise<number> {
  let o: Options | null;
  try { o = parseOptions(args); } catch (e) {
    process.stderr.write(`minivmm kernel-test: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (!o) { process.stdout.write(`${USAGE}\n`); return 0; }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const runDir = join(cacheRoot(), 'kernel-test', stamp);
  mkdirSync(runDir, { recursive: true });
  const progress = createWriteStream(join(runDir, 'output.log'));
  out = (line) => { process.stdout.write(`${line}\n`); progress.write(`${line}\n`); };
  const start = Date.now();
  say(`logs in ${runDir}`);
  let kernel: KernelTestReport['kernel'];
  try {
    const stale = staleDist();
    if (stale?.endsWith('missing: run npm run build')) throw new KernelTestError(stale);
    if (stale) say(`warning: ${stale}`);
    // Checked before any build: the guest must be able to run this node.
    const hidden = hiddenInGuest(process.execPath);
    if (hidden) throw new KernelTestError(`node (${process.execPath}) lies under ${hidden}, which the guest covers with a tmpfs: use a node installed elsewhere`);
    ensurePackages(!o.kernel, !o.kernel && !o.source, o.installDeps);
    if (o.kernel) {
      kernel = { bzImage: o.kernel };
      say(`kernel ${o.kernel} (given)`);
    } else {
      const src = o.source ?? debianSource();
      const fragments = [FRAGMENT, ...(o.fragment ? [o.fragment] : [])];
      const b = await buildKernel(src, fragments, o, runDir);
      kernel = { bzImage: b.bzImage, source: src, version: b.version, hash: b.hash, cached: b.cached, buildSeconds: b.buildSeconds };
    }
  } catch (e) {
    const msg = e instanceof KernelTestError ? e.message : (e as Error).stack ?? String(e);
    say(`FAIL: ${msg}`);
    say(`logs in ${runDir}`);
    out('0 passed, 1 failed, 0 skipped');
    await new Promise<void>((r) => progress.end(() => r()));
    return 2;
  }

  const boots: Boot[] = [];
  for (const dma of o.dma) boots.push(await bootAndRun(kernel.bzImage, o, runDir, dma));
  const problems: string[] = [];
  for (const b of boots) {
    for (const p of b.problems) problems.push(`[${b.dma.toUpperCase()}] ${p}`);
    for (const d of b.devices) if (o.conformance && d.problem) problems.push(`[${b.dma.toUpperCase()}] ${d.name} (${d.mgmt}): ${d.problem}`);
  }
  const devices = o.conformance ? boots.flatMap((b) => b.devices) : [];
  const e2eRuns = boots.flatMap((b) => (b.e2e ? [b.e2e] : []));
  const e2e = e2eRuns.map((e) => ({ ...(e.report ?? { mode: e.dma, verdict: 'fail' } as E2eReport), seconds_host: e.seconds, problem: e.problem }));
  const e2ePassed = e2eRuns.filter((e) => e.report?.verdict === 'pass' && !e.problem).length;
  const sum = (k: 'passed' | 'failed' | 'skipped'): number => devices.reduce((n, d) => n + (d.report?.[k] ?? 0), 0);
  const report: KernelTestReport = {
    passed: sum('passed') + e2ePassed,
    failed: sum('failed') + problems.length + (e2eRuns.length - e2ePassed),
    skipped: sum('skipped') + (o.e2e ? 0 : o.dma.length),
    verdict: 'pass', kernel, runDir, boots: boots.map((b) => ({ dma: b.dma, bootSeconds: b.bootSeconds, seconds: b.seconds })),
    totalSeconds: (Date.now() - start) / 1000, problems,
    devices: devices.map(({ name, mgmt, dma, node, exit, seconds, problem, report: r }) => ({ name, mgmt, dma, node, exit, seconds, problem, report: r })),
    e2e,
  };
  if (report.passed === 0 && report.failed === 0) { problems.push('nothing passed'); report.failed = 1; }
  report.verdict = report.failed === 0 ? 'pass' : 'fail';
  const text = `${JSON.stringify(report, null, 2)}\n`;
  writeFileSync(join(runDir, 'report.json'), text);
  if (o.json) { mkdirSync(dirname(o.json), { recursive: true }); writeFileSync(o.json, text); }
  for (const p of problems) say(`FAIL: ${p}`);
  // One line per stage.
  for (const d of devices) {
    const fails = d.report?.cases.filter((c) => c.result === 'fail').map((c) => c.id) ?? [];
    say(`stage conformance ${d.dma.toUpperCase()} ${d.name} (${d.mgmt}, ${d.node ?? 'no node'}): ` +
      (d.report ? `${d.report.passed} passed, ${d.report.failed} failed, ${d.report.skipped} skipped${fails.length ? `; failed cases ${fails.join(', ')}` : ''}` : `FAIL: ${d.problem}`));
  }
  for (const e of e2eRuns) {
    const r = e.report;
    const ok = r?.verdict === 'pass' && !e.problem;
    say(`stage e2e ${e.dma.toUpperCase()} (${r?.device ?? 'vdpa_sim net+blk'}, netblk ${r?.memory ?? ''}): ${ok ? 'PASS' : 'FAIL'}` +
      `${r ? ` in ${r.seconds} s: ${e2eLine(r)}` : ''}${e.problem ? `; ${e.problem}` : ''}${r && r.problems.length ? `; ${r.problems.length} problem(s), first: ${r.problems[0].split('\n')[0]}` : ''}`);
  }
  if (!o.e2e) say(`stage e2e: skipped (--no-e2e) in ${o.dma.map((d) => d.toUpperCase()).join(', ')}`);
  say(`${report.verdict === 'pass' ? 'PASS' : 'FAIL'} in ${secs(start)} (boots ${boots.map((b) => `${b.dma.toUpperCase()} ${b.seconds.toFixed(1)} s`).join(', ')}${kernel.cached === false ? `, build ${kernel.buildSeconds?.toFixed(0)} s` : ''}); logs in ${runDir}`);
  out(`${report.passed} passed, ${report.failed} failed, ${report.skipped} skipped`);
  await new Promise<void>((r) => progress.end(() => r()));
  return report.verdict === 'pass' ? 0 : 1;
}

const isEntry = (() => { try { return realpathSync(process.argv[1] ?? '') === realpathSync(fileURLToPath(import.meta.url)); } catch { return false; } })();
if (isEntry) kernelTest(process.argv.slice(2)).then((c) => process.exit(c), (e) => { console.error(e); process.exit(2); });
