// minivmm kernel-test: run the vhost-vdpa conformance suite (tools/conformance) against a real
// kernel's vhost-vdpa + vdpa_sim, in QEMU with TCG (this machine's KVM cannot boot Linux).
//
//   minivmm kernel-test [--kernel BZIMAGE | --source DIR] [--fragment FILE] [--json OUT]
//                       [--timeout SEC] [--only N,N,...] [--jobs N] [--rebuild]
//   node dist/tools/kernel/main.js ...           (same, without the CLI)
//
// 1. Kernel: --kernel as given; --source DIR built with tools/kernel/vdpa-guest.config (plus
//    --fragment); neither: Debian's linux-source-6.12 (installed with apt if missing), unpacked under
//    ~/.cache/minivmm/src/. Built bzImages are cached in ~/.cache/minivmm/kernels/<hash>/, the hash
//    covering the tree's version, git HEAD and uncommitted diff, the files the live-update series
//    touches, the fragments and the compiler.
// 2. Boot: qemu-system-x86_64 (TCG), the host's / read-only over 9p as the guest's root, a writable
//    9p share (the run directory's results/) for guest.env and the suite's JSON reports, and
//    tools/kernel/init.sh as init: it creates vdpa_sim net + blk devices and runs the suite on each
//    /dev/vhost-vdpa-N with the host's node and this repo's dist/.
// 3. Verdict: the suite's lines are printed as they come; the closing line sums the devices'
//    reports. A panic, oops, BUG, WARNING, timeout, missing device or missing report is a failure
//    (counted as one failed case each, and named in a FAIL line).
//
// Logs of every run: ~/.cache/minivmm/kernel-test/<timestamp>/ (build.log, console.log,
// results/*.json, report.json); the path is printed first and last.
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
/** Files of the live-update series (and their neighbours): hashed into the cache key for any tree. */
const SERIES_FILES = ['drivers/vhost/vdpa.c', 'drivers/vhost/vhost.c', 'drivers/vhost/vhost.h', 'drivers/vhost/iotlb.c',
  'include/uapi/linux/vhost.h', 'include/uapi/linux/vhost_types.h', 'include/linux/vdpa.h', 'include/linux/vhost_iotlb.h',
  'drivers/vdpa/vdpa.c', 'drivers/vdpa/vdpa_sim/vdpa_sim.c', 'drivers/vdpa/vdpa_sim/vdpa_sim.h',
  'drivers/vdpa/vdpa_sim/vdpa_sim_net.c', 'drivers/vdpa/vdpa_sim/vdpa_sim_blk.c'];
/** Host tools and the Debian packages that provide them (installed with apt when missing, as root). */
const TOOLS: [probe: string, pkg: string][] = [
  ['qemu-system-x86_64', 'qemu-system-x86'], ['make', 'make'], ['gcc', 'gcc'], ['flex', 'flex'], ['bison', 'bison'],
  ['bc', 'bc'], ['cpio', 'cpio'], ['xz', 'xz-utils'], ['/usr/include/libelf.h', 'libelf-dev'],
  ['/usr/include/openssl/ssl.h', 'libssl-dev'], ['busybox', 'busybox-static'], ['vdpa', 'iproute2'],
];

export class KernelTestError extends Error {}

interface Options {
  kernel?: string; source?: string; fragment?: string; json?: string; timeout: number;
  only?: string; jobs: number; rebuild: boolean;
}

const USAGE = `usage: minivmm kernel-test [--kernel BZIMAGE | --source DIR] [--fragment FILE] [--json OUT]
                          [--timeout SEC] [--only N,N,...] [--jobs N] [--rebuild]
  --kernel BZIMAGE  boot this kernel (it must have the options of tools/kernel/vdpa-guest.config)
  --source DIR      build DIR (a kernel tree, e.g. with the live-update patches) and boot it
  (neither)         build and boot Debian's ${DEBIAN_PKG}: the upstream baseline
  --fragment FILE   extra Kconfig fragment merged after tools/kernel/vdpa-guest.config
  --json OUT        write the combined report (all devices, verdict, paths) to OUT
  --timeout SEC     bound on boot + suite run (default 600); the build is not bounded
  --only N,N,...    run only these conformance cases
  --jobs N          make -jN (default: the number of CPUs)
  --rebuild         build even if the cache has this kernel
Logs: ~/.cache/minivmm/kernel-test/<timestamp>/ (build.log, console.log, results/, report.json)`;

function parseOptions(args: string[]): Options | null {
  const o: Options = { timeout: 600, jobs: Math.max(1, cpus().length), rebuild: false };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const val = (): string => {
      const v = args[++i];
      if (v === undefined) throw new KernelTestError(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--kernel': o.kernel = resolve(val()); break;
      case '--source': o.source = resolve(val()); break;
      case '--fragment': o.fragment = resolve(val()); break;
      case '--json': o.json = resolve(val()); break;
      case '--timeout': o.timeout = Number(val()); break;
      case '--only': o.only = val(); break;
      case '--jobs': case '-j': o.jobs = Number(val()); break;
      case '--rebuild': o.rebuild = true; break;
      case '-h': case '--help': return null;
      default: throw new KernelTestError(`unknown option '${a}'`);
    }
  }
  if (o.kernel && o.source) throw new KernelTestError('--kernel and --source exclude each other');
  if (o.kernel && o.fragment) throw new KernelTestError('--fragment applies to a build (--source or the default), not to --kernel');
  if (!(o.timeout > 0)) throw new KernelTestError('--timeout: a positive number of seconds');
  if (!(Number.isInteger(o.jobs) && o.jobs > 0)) throw new KernelTestError('--jobs: a positive integer');
  if (o.only && !/^\d+(,\d+)*$/.test(o.only)) throw new KernelTestError(`--only ${o.only}: case numbers, comma-separated`);
  if (o.kernel && !existsSync(o.kernel)) throw new KernelTestError(`--kernel ${o.kernel} does not exist`);
  if (o.source && !existsSync(join(o.source, 'Makefile'))) throw new KernelTestError(`--source ${o.source}: no Makefile there (not a kernel tree)`);
  if (o.fragment && !existsSync(o.fragment)) throw new KernelTestError(`--fragment ${o.fragment} does not exist`);
  return o;
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
  return spawnSync('sh', ['-c', `command -v ${probe}`], { stdio: 'ignore' }).status === 0;
}

function aptInstall(pkgs: string[], why: string): void {
  if (process.getuid?.() !== 0 || !have('apt-get')) {
    throw new KernelTestError(`${why}: install ${pkgs.join(' ')} (apt-get install -y ${pkgs.join(' ')})`);
  }
  say(`${why}: apt-get install -y ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  let r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs], { stdio: ['ignore', 'ignore', 'pipe'], env });
  if (r.status !== 0) {
    say('apt-get update');
    spawnSync('apt-get', ['update'], { stdio: 'ignore', env });
    r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs], { stdio: ['ignore', 'ignore', 'pipe'], env });
  }
  if (r.status !== 0) throw new KernelTestError(`apt-get install ${pkgs.join(' ')} failed: ${r.stderr.toString().trim().split('\n').pop()}`);
}

function ensureTools(build: boolean): void {
  const needed = build ? TOOLS : TOOLS.filter(([p]) => ['qemu-system-x86_64', 'vdpa', 'busybox'].includes(p));
  const missing = [...new Set(needed.filter(([p]) => !have(p)).map(([, pkg]) => pkg))];
  if (missing.length) aptInstall(missing, 'missing host tools');
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
  if (!existsSync(DEBIAN_TARBALL)) aptInstall([DEBIAN_PKG], `${DEBIAN_TARBALL} is missing`);
  if (!existsSync(DEBIAN_TARBALL)) throw new KernelTestError(`${DEBIAN_TARBALL} still missing after installing ${DEBIAN_PKG}`);
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
interface DeviceRun { name: string; mgmt: string; node?: string; exit?: number; report?: SuiteReport; problem?: string; seconds?: number }
interface Boot { devices: DeviceRun[]; problems: string[]; bootSeconds?: number; seconds: number; ended: boolean }

const KERNEL_TROUBLE = /Kernel panic|BUG: |Oops|general protection fault|WARNING: CPU|Call Trace:|soft lockup|hung_task|blocked for more than/;

async function bootAndRun(bzImage: string, o: Options, runDir: string): Promise<Boot> {
  const results = join(runDir, 'results');
  mkdirSync(results, { recursive: true });
  // The guest runs the suite from a copy of the build kept with the run's files: a rebuild of
  // dist/ during the run (minutes) cannot change what the suite's child roles load.
  const build = copyBuild(REPO, join(runDir, 'minivmm-build'));
  const env = {
    MINIVMM_REPO: build.root, MINIVMM_NODE: process.execPath,
    MINIVMM_DEVICES: DEVICES.map(([m, n]) => `${m}:${n}`).join(' '),
    MINIVMM_SUITE_ARGS: o.only ? `--only ${o.only}` : '',
  };
  writeFileSync(join(results, 'guest.env'), Object.entries(env).map(([k, v]) => `${k}='${v.replace(/'/g, `'\\''`)}'\n`).join(''));
  const append = ['console=ttyS0', 'panic=-1', 'oops=panic', 'root=hostroot', 'rootfstype=9p',
    'rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose', 'ro', 'init=/bin/sh', '--', INIT].join(' ');
  const args = ['-accel', 'tcg,thread=multi', '-cpu', 'max', '-m', '2G', '-smp', '2', '-nographic', '-no-reboot', '-nic', 'none',
    '-kernel', bzImage, '-append', append,
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${results},mount_tag=results,security_model=none,multidevs=remap`];
  writeFileSync(join(runDir, 'qemu.cmdline'), `qemu-system-x86_64 ${args.map((a) => (/[\s"']/.test(a) ? `'${a}'` : a)).join(' ')}\n`);
  const consolePath = join(runDir, 'console.log');
  const consoleLog = createWriteStream(consolePath);
  const boot: Boot = { devices: DEVICES.map(([mgmt, name]) => ({ name, mgmt })), problems: [], seconds: 0, ended: false };
  const byName = (n: string): DeviceRun | undefined => boot.devices.find((d) => d.name === n);
  const t = Date.now();
  let current: DeviceRun | undefined;
  let runStart = 0;
  let lastLines: string[] = [];
  say(`booting ${bzImage} in QEMU (TCG), timeout ${o.timeout} s; console ${consolePath}`);

  const onLine = (raw: string): void => {
    const line = raw.replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    lastLines.push(line);
    if (lastLines.length > 40) lastLines = lastLines.slice(-40);
    const m = /^@@minivmm (\S+) ?(.*)$/.exec(line);
    if (m) {
      const [, what, rest] = m;
      const w = rest.split(' ');
      if (what === 'booted') { boot.bootSeconds = (Date.now() - t) / 1000; say(`booted ${w[0]} in ${secs(t)}`); }
      else if (what === 'device') { const d = byName(w[0]); if (d) d.node = w[2]; say(`created ${w[0]} (${w[1]}): ${w[2]}`); }
      else if (what === 'nodevice') { const d = byName(w[0]); if (d) d.problem = `not created: ${w.slice(2).join(' ')}`; say(`FAIL: device ${w[0]} (${w[1]}) ${w.slice(2).join(' ')}`); }
      else if (what === 'nodes') say(`device nodes: ${rest.trim() || 'none'}`);
      else if (what === 'mgmtdevs') { /* console.log has it */ }
      else if (what === 'run') { current = byName(w[0]); runStart = Date.now(); say(`running the conformance suite on ${w[0]} ${w[1]}`); }
      else if (what === 'exit') {
        const d = byName(w[0]);
        if (d) { d.exit = Number(w[1]); d.seconds = (Date.now() - runStart) / 1000; }
        say(`${w[0]}: suite exited with status ${w[1]} after ${secs(runStart)}`);
        current = undefined;
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
    if (current && !kernel) {
      out(/^\d+ passed, \d+ failed, \d+ skipped$/.test(line) ? `${current.name}: ${line}` : line);
    }
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
    const timer = setTimeout(() => {
      boot.problems.push(`timeout: no power-off within ${o.timeout} s (hang?)`);
      say(`FAIL: timeout after ${o.timeout} s; stopping QEMU`);
      q.kill('SIGTERM');
      setTimeout(() => q.kill('SIGKILL'), 5000).unref();
    }, o.timeout * 1000);
    q.on('error', (e) => { clearTimeout(timer); boot.problems.push(`qemu: ${e.message}`); res(null); });
    q.on('close', (c) => { clearTimeout(timer); if (buf) onLine(buf); res(c); });
  });
  consoleLog.end();
  await new Promise<void>((r) => consoleLog.on('close', () => r()));
  boot.seconds = (Date.now() - t) / 1000;
  if (code !== 0 && code !== null && !boot.problems.length) boot.problems.push(`qemu exited with status ${code}`);
  if (!boot.ended && !boot.problems.length) boot.problems.push('the guest stopped before the end of its init (see console.log)');
  if (boot.bootSeconds === undefined && boot.problems.length) {
    say(`the guest never reached init; last console lines:\n${lastLines.slice(-20).join('\n')}`);
  }
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
  runDir: string; bootSeconds?: number; runSeconds: number; totalSeconds: number;
  problems: string[];
  devices: { name: string; mgmt: string; node?: string; exit?: number; seconds?: number; problem?: string; report?: SuiteReport }[];
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
    if (o.kernel) {
      ensureTools(false);
      kernel = { bzImage: o.kernel };
      say(`kernel ${o.kernel} (given)`);
    } else {
      ensureTools(true);
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
    progress.end();
    return 2;
  }

  const boot = await bootAndRun(kernel.bzImage, o, runDir);
  const problems = [...boot.problems];
  for (const d of boot.devices) if (d.problem) problems.push(`${d.name} (${d.mgmt}): ${d.problem}`);
  const sum = (k: 'passed' | 'failed' | 'skipped'): number => boot.devices.reduce((n, d) => n + (d.report?.[k] ?? 0), 0);
  const report: KernelTestReport = {
    passed: sum('passed'), failed: sum('failed') + problems.length, skipped: sum('skipped'),
    verdict: 'pass', kernel, runDir, bootSeconds: boot.bootSeconds, runSeconds: boot.seconds,
    totalSeconds: (Date.now() - start) / 1000, problems,
    devices: boot.devices.map(({ name, mgmt, node, exit, seconds, problem, report: r }) => ({ name, mgmt, node, exit, seconds, problem, report: r })),
  };
  report.verdict = report.failed === 0 && report.passed > 0 ? 'pass' : 'fail';
  if (report.passed === 0 && report.failed === 0) { problems.push('no case passed'); report.failed = 1; }
  const text = `${JSON.stringify(report, null, 2)}\n`;
  writeFileSync(join(runDir, 'report.json'), text);
  if (o.json) { mkdirSync(dirname(o.json), { recursive: true }); writeFileSync(o.json, text); }
  for (const p of problems) say(`FAIL: ${p}`);
  for (const d of boot.devices) {
    if (d.report) say(`${d.name} (${d.mgmt}, ${d.node}): ${d.report.passed} passed, ${d.report.failed} failed, ${d.report.skipped} skipped`);
    const fails = d.report?.cases.filter((c) => c.result === 'fail').map((c) => c.id) ?? [];
    if (fails.length) say(`${d.name}: failed cases ${fails.join(', ')}`);
  }
  say(`${report.verdict === 'pass' ? 'PASS' : 'FAIL'} in ${secs(start)} (boot + suite ${boot.seconds.toFixed(1)} s${kernel.cached === false ? `, build ${kernel.buildSeconds?.toFixed(0)} s` : ''}); logs in ${runDir}`);
  out(`${report.passed} passed, ${report.failed} failed, ${report.skipped} skipped`);
  await new Promise<void>((r) => progress.end(() => r()));
  return report.verdict === 'pass' ? 0 : 1;
}

const isEntry = (() => { try { return realpathSync(process.argv[1] ?? '') === realpathSync(fileURLToPath(import.meta.url)); } catch { return false; } })();
if (isEntry) kernelTest(process.argv.slice(2)).then((c) => process.exit(c), (e) => { console.error(e); process.exit(2); });
