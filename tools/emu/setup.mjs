// Build step of the emu accelerator (run by `npm run build`, hence by `npm install`): makes sure
// Unicorn is installed (libunicorn2 for the library, libunicorn-dev for the headers), installing
// Debian's packages when we are root and have apt-get, then compiles the C shim into
// dist/emu/libminivmm-emu.so. A missing library does not fail the build (KVM machines do not need
// it): the emu accelerator then reports itself unavailable, naming the command to run.
//
//   node tools/emu/setup.mjs [--no-install]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const source = join(root, 'src', 'accel', 'emu', 'shim.c');
const output = join(root, 'dist', 'emu', 'libminivmm-emu.so');
const PACKAGES = ['libunicorn2', 'libunicorn-dev'];
const INSTALL = `sudo apt-get install ${PACKAGES.join(' ')}`;
const say = (msg) => console.log(`emu: ${msg}`);

const headers = () => existsSync('/usr/include/unicorn/unicorn.h');
const library = () => spawnSync('sh', ['-c', 'ldconfig -p | grep -q "libunicorn.so.2 "']).status === 0;
const have = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;

function aptInstall() {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...PACKAGES], { env, encoding: 'utf8' });
  let r = install();
  if (r.status !== 0) { // stale package lists are the usual reason
    say('apt-get install failed; running apt-get update and trying again');
    spawnSync('apt-get', ['update'], { env, stdio: 'ignore' });
    r = install();
  }
  if (r.status !== 0) {
    say(`could not install ${PACKAGES.join(' ')}: ${(r.stderr || r.stdout || '').trim().split('\n').pop()}`);
    return false;
  }
  say(`installed ${PACKAGES.join(' ')} with apt-get (Unicorn, QEMU's CPU emulator as a library; GPLv2, loaded at run time)`);
  return true;
}

if (!headers() || !library()) {
  const missing = [!library() && 'libunicorn2', !headers() && 'libunicorn-dev'].filter(Boolean).join(' and ');
  if (process.getuid?.() === 0 && have('apt-get') && !process.argv.includes('--no-install')) {
    say(`${missing} missing: installing`);
    aptInstall();
  }
  if (!headers() || !library()) {
    if (existsSync(output)) unlinkSync(output); // never leave a shim for a library that is gone
    say(`${missing} missing: the emu accelerator (for machines without /dev/kvm) is unavailable; to get it, run: ${INSTALL} && npm run build`);
    process.exit(0);
  }
}

if (existsSync(output) && statSync(output).mtimeMs >= statSync(source).mtimeMs && statSync(output).mtimeMs >= statSync(fileURLToPath(import.meta.url)).mtimeMs) {
  say(`shim up to date: ${relative(root, output)}`);
  process.exit(0);
}
mkdirSync(dirname(output), { recursive: true });
const r = spawnSync('gcc', ['-O2', '-g', '-shared', '-fPIC', '-fvisibility=hidden', '-Wall', '-Wextra', '-o', output, source,
  '-lunicorn', '-lpthread', '-ldl'], { encoding: 'utf8' });
process.stderr.write(r.stderr ?? '');
if (r.error || r.status !== 0) {
  console.error(`emu: compiling ${relative(root, source)} failed${r.error ? `: ${r.error.message}` : ''}`);
  process.exit(1);
}
say(`shim built: ${relative(root, output)}`);
