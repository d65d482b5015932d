// Mutated `minivmm run` option lists and size strings.
import type { Rng } from './prng.js';

export const RUN_OPTIONS = ['--guest', '--memory', '--smp', '--serial', '--qmp', '--append', '--log-level', '--vdpa'];

/** Valid-looking values per option (the mutator starts near valid input). */
const VALUES: Record<string, string[]> = {
  '--guest': ['hello', 'counter', 'memtest', 'netloop', 'blkcheck', 'netblk', './dist/guests/hello.elf', '/nonexistent/x.elf', 'nosuch', '/', '/etc/passwd', '.', '..', '-', 'hello.elf', 'HELLO', ' hello'],
  '--memory': ['256M', '1G', '16M', '512m', '1g', '2GiB', '1024MiB', '1048576k', '268435456', '0', '15M', '17M', '1T', '4096G', '1.5G', '0.5G', '-1G', '1e9', '0x1000', '', ' ', 'G', '1GG', '1 G', '١G', '9'.repeat(400), '18446744073709551616', '2.000000001G'],
  '--smp': ['1', '2', '3', '4', '0', '5', '-1', '1.5', '01', '0x2', '', ' 2', '2 ', 'NaN', 'Infinity', '1e0', '4.0', '99999999999999999999'],
  '--serial': ['stdio', '/tmp/minivmm-fuzz-serial.txt', '', 'STDIO', '/dev/null', '/proc/nonexistent/x', '/'],
  '--qmp': ['/tmp/minivmm-fuzz.sock', '', 'relative.sock', `/tmp/${'q'.repeat(150)}.sock`, '/nonexistent/dir/q.sock'],
  '--append': ['', 'iters=5', 'a'.repeat(255), 'a'.repeat(256), 'key=value with spaces', '\u00e9\u00e9', '--guest'],
  '--log-level': ['info', 'debug', 'silent', 'fatal', 'trace', 'warn', 'error', 'INFO', 'verbose', '', '0', '60'],
  '--vdpa': ['sim:net', 'sim:blk', 'sim:net,va', 'sim:net,pa', 'sim:blk,pa,no-new-owner', 'sim:net,pin-cost=5', 'sim:net,pin-cost=-1', 'sim:', 'sim:gpu', 'sim:net,xx', '/dev/vhost-vdpa-0', './x', 'relative', '', 'sim:net,,va', 'sim:net,va,pa'],
};

const WEIRD = ['', '-', '--', '---', '-g', '--=', '--guest=', '--memory=1G', '--smp=2', '--vdpa=sim:net', '--help', '-h', '--version', '--no-guest', '--GUEST', 'run', '\u0000'.slice(1), ' ', '\t', '\u{1f4a9}', '%s%n', '$(id)', '../'.repeat(50), 'x'.repeat(5000), '--frobnicate', '--guest=--memory'];

function randomValue(r: Rng): string {
  return r.pick([
    () => r.pick(WEIRD),
    () => r.str(r.int(20)),
    () => String(r.u32() - 2 ** 31),
    () => `${r.int(100000)}${r.pick(['', 'k', 'K', 'm', 'M', 'g', 'G', 't', 'T', 'KiB', 'MB', 'gib', 'b', 'B', 'x'])}`,
    () => r.pick(Object.values(VALUES).flat()),
  ])();
}

/** A plausible valid option list. */
export function baseArgs(r: Rng): string[] {
  const out = ['--guest', r.bool(0.2) ? r.pick(['hello', 'counter', 'memtest']) : r.pick(['./dist/guests/hello.elf', 'dist/guests/counter.elf', `${process.cwd()}/dist/guests/memtest.elf`])];
  for (const opt of RUN_OPTIONS.slice(1)) {
    if (r.bool(0.4)) out.push(opt, r.pick(VALUES[opt].slice(0, 3)));
  }
  return out;
}

/** 1–4 mutations of a valid list. */
export function mutateArgs(r: Rng, args: string[]): string[] {
  const a = [...args];
  const n = 1 + r.int(4);
  for (let i = 0; i < n; i++) {
    const at = r.int(a.length + 1);
    switch (r.int(10)) {
      case 0: if (a.length) a.splice(r.int(a.length), 1); break; // drop (may orphan a value)
      case 1: a.splice(at, 0, r.pick(RUN_OPTIONS)); break; // option without (or with a shifted) value
      case 2: { const o = r.pick(RUN_OPTIONS); a.splice(at, 0, o, r.pick(VALUES[o])); break; }
      case 3: { const o = r.pick(RUN_OPTIONS); a.splice(at, 0, `${o}=${r.pick(VALUES[o])}`); break; }
      case 4: if (a.length) a[r.int(a.length)] = randomValue(r); break;
      case 5: a.splice(at, 0, randomValue(r)); break; // a positional or unknown option
      case 6: if (a.length > 1) { const x = r.int(a.length), y = r.int(a.length); [a[x], a[y]] = [a[y], a[x]]; } break;
      case 7: { const o = r.pick(RUN_OPTIONS); a.push(o, randomValue(r)); break; }
      case 8: a.splice(at, 0, r.pick(WEIRD)); break;
      default: { const o = r.pick(RUN_OPTIONS); a.push(o, r.pick(VALUES[o])); }
    }
  }
  return a;
}

/** Size strings: valid, nearly valid and junk. */
export function sizeString(r: Rng): string {
  return r.pick([
    () => r.pick(VALUES['--memory']),
    () => `${r.bool() ? r.int(1 << 20) : r.u32()}${r.pick(['', 'k', 'm', 'g', 't', 'K', 'M', 'G', 'T'])}${r.pick(['', 'b', 'B', 'ib', 'iB', 'iB ', 'bb', 'i'])}`,
    () => `${r.int(1000)}.${r.int(100000)}${r.pick(['', 'k', 'M', 'G', 'T'])}`,
    () => `${r.pick(['', ' ', '\t', '+', '-', '0', '00'])}${r.int(4096)}${r.pick(['', ' ', '  '])}${r.pick(['M', 'G', 'g', ''])}${r.pick(['', ' ', '\n'])}`,
    () => '9'.repeat(1 + r.int(400)) + r.pick(['', 'G', 'T']),
    () => r.str(r.int(12), '0123456789.kmgtibKMGTIB -+xe'),
    () => r.str(r.int(30)),
  ])();
}
