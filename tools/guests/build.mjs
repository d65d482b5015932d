// Builds the minivmm toy guests: every tools/guests/NAME.c, linked with
// everything in common/ (.c and .S), becomes dist/guests/NAME.elf.  Sections
// no guest code reaches are dropped, so hello does not carry the drivers.
//
//   node tools/guests/build.mjs [NAME...]
//
// The guests run under this machine's KVM instruction emulator, which only
// knows baseline integer instructions, so after building we disassemble each
// ELF and refuse anything the emulator would die on. We also check the ELF
// against the boot contract (ET_EXEC x86-64, entry 1 MiB, loads in [1, 2) MiB).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const outDir = join(root, 'dist', 'guests');

export const CFLAGS = [
  '-m64', '-march=x86-64', '-mtune=generic', '-mgeneral-regs-only', '-mno-red-zone',
  '-mno-sse', '-mno-mmx', '-mno-80387',
  '-ffreestanding', '-fno-pic', '-fno-stack-protector',
  '-fno-asynchronous-unwind-tables', '-fno-unwind-tables', '-fcf-protection=none',
  // Otherwise gcc may turn memset's own loop into a call to memset.
  '-fno-tree-loop-distribute-patterns',
  // Inline memset/memcpy as plain loops, not rep stos/movs (as start.S does).
  '-mstringop-strategy=loop',
  '-O2', '-std=gnu11', '-Wall', '-Wextra',
  '-ffunction-sections', '-fdata-sections',
  '-nostdlib', '-static', '-no-pie',
  '-Wl,--build-id=none', '-Wl,-z,max-page-size=4096', '-Wl,--gc-sections',
];

// Instructions the emulator does not know (or that imply SSE/AVX state).
const BAD_MNEMONIC = new RegExp(
  '\\b(shlx|shrx|sarx|rorx|andn|bextr|blsi|blsr|blsmsk|bzhi|pdep|pext|tzcnt|lzcnt|popcnt|' +
  'movbe|rdrand|rdseed|xsave\\w*|xrstor\\w*|fxsave\\w*|fxrstor\\w*|endbr32|endbr64|vzeroupper)\\b');
const BAD_REGISTER = /%([xyz]mm\d+|mm\d|st\b|st\(|k[0-7]\b)/;

const rel = (f) => relative(root, f);
const mtime = (f) => statSync(f).mtimeMs;

// start.S first: it holds _start, which must land at exactly 1 MiB.
const commonDir = join(here, 'common');
const common = readdirSync(commonDir).filter((f) => /\.[cS]$/.test(f))
  .sort((a, b) => (b === 'start.S') - (a === 'start.S') || a.localeCompare(b))
  .map((f) => join(commonDir, f));
const deps = [
  ...readdirSync(commonDir).map((f) => join(commonDir, f)),
  ...['include/bootinfo.h', 'link.ld', 'build.mjs'].map((f) => join(here, f)),
];

/**
 * gcc arguments that build `sources` (with the shared runtime in common/) into a toy guest ELF at
 * `out`, at optimization level `opt` (e.g. '-O0', '-Os'). Also used by tests that build guests.
 */
export function guestGccArgs(sources, out, opt = '-O2') {
  return [...CFLAGS.map((f) => (f === '-O2' ? opt : f)), '-T', join(here, 'link.ld'), '-I', join(here, 'include'),
    '-I', join(here, 'common'), ...common, ...sources, '-o', out];
}

function compile(name) {
  const src = join(here, `${name}.c`);
  const elf = join(outDir, `${name}.elf`);
  const newest = Math.max(...[src, ...deps].map(mtime));
  if (existsSync(elf) && mtime(elf) >= newest) return 'up to date';

  const r = spawnSync('gcc', guestGccArgs([src], elf), { encoding: 'utf8' });
  if (r.error) fail(`${name}: cannot run gcc: ${r.error.message}`);
  process.stderr.write(r.stderr); // warnings too
  if (r.status !== 0) {
    if (existsSync(elf)) unlinkSync(elf);
    fail(`${name}: gcc failed (status ${r.status})`);
  }
  return 'built';
}

// Returns [instruction count, offending lines].
function checkInstructions(elf) {
  const r = spawnSync('objdump', ['-d', '--no-show-raw-insn', elf], {
    encoding: 'utf8', maxBuffer: 64 << 20,
  });
  if (r.error || r.status !== 0) fail(`objdump failed on ${rel(elf)}: ${r.error?.message ?? r.stderr}`);
  let count = 0;
  const bad = [];
  for (const line of r.stdout.split('\n')) {
    const m = /^\s*[0-9a-f]+:\t(.*)$/.exec(line);
    if (!m) continue;
    count++;
    const insn = m[1].replace(/<[^>]*>/g, ''); // symbol names are not instructions
    if (BAD_MNEMONIC.test(insn) || BAD_REGISTER.test(insn) || insn.includes('(bad)')) bad.push(line.trim());
  }
  return [count, bad];
}

// The VMM side of the boot contract, checked here so a bad link fails early.
function checkElf(elf) {
  const b = readFileSync(elf);
  if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) return ['not an ELF64 LSB file'];
  const errs = [];
  if (b.readUInt16LE(16) !== 2) errs.push('e_type is not ET_EXEC');
  if (b.readUInt16LE(18) !== 62) errs.push('e_machine is not x86-64');
  const entry = b.readBigUInt64LE(24);
  if (entry !== 0x100000n) errs.push(`entry 0x${entry.toString(16)} is not 0x100000`);
  const phoff = Number(b.readBigUInt64LE(32));
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    if (b.readUInt32LE(p) !== 1) continue; // PT_LOAD only
    const paddr = b.readBigUInt64LE(p + 24);
    const memsz = b.readBigUInt64LE(p + 40);
    if (paddr < 0x100000n || paddr + memsz > 0x200000n) {
      errs.push(`PT_LOAD [0x${paddr.toString(16)}, 0x${(paddr + memsz).toString(16)}) outside [1 MiB, 2 MiB)`);
    }
  }
  return errs;
}

function fail(msg) {
  console.error(`guests: ${msg}`);
  process.exit(1);
}

// The build itself, when run as a script (not when imported for guestGccArgs).
if (process.argv[1] === fileURLToPath(import.meta.url)) main();

function main() {
  const all = readdirSync(here).filter((f) => f.endsWith('.c')).map((f) => f.slice(0, -2)).sort();
  const wanted = process.argv.slice(2);
  for (const w of wanted) if (!all.includes(w)) fail(`no guest named ${w} (have: ${all.join(' ')})`);

  mkdirSync(outDir, { recursive: true });
  for (const name of wanted.length ? wanted : all) {
    const state = compile(name);
    const elf = join(outDir, `${name}.elf`);
    const [count, bad] = checkInstructions(elf);
    const errs = [...checkElf(elf), ...bad.map((l) => `non-baseline instruction: ${l}`)];
    if (errs.length) {
      unlinkSync(elf); // never leave a guest around that the emulator cannot run
      fail(`${name}:\n  ${errs.join('\n  ')}`);
    }
    console.log(`guest ${name}: ${state} ${rel(elf)} (${count} instructions, baseline ok)`);
  }
}
