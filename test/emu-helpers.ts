// Helpers for the emu accelerator's tests: building toy guests (and their native twins) with the
// system gcc, and running them on emu through tools/emu/driver.ts.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
// @ts-expect-error: a JavaScript build script without type declarations
import { guestGccArgs, CFLAGS } from '../tools/guests/build.mjs';
import { EmuAccelerator } from '../src/accel/emu/index.js';
import type { Accelerator } from '../src/accel/index.js';
import { ROOT } from './harness.js';

export const GUESTS = join(ROOT, 'tools/guests');

let accel: Accelerator | undefined;
/** The emu accelerator (the test is gated on the 'emu' facility). */
export const emu = (): Accelerator => (accel ??= EmuAccelerator.open());

function gcc(args: string[], what: string): void {
  const r = spawnSync('gcc', args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`gcc (${what}) failed: ${r.error?.message ?? r.stderr}`);
}

/** Builds a toy guest from `sources` (plus the shared runtime) at optimization `opt`. */
export function buildGuest(sources: string[], out: string, opt = '-O2'): string {
  gcc(guestGccArgs(sources, out, opt) as string[], out);
  return out;
}

/** Builds the same C for the host, with the guests' code-generation rules (not their linking). */
export function buildHost(sources: string[], out: string, opt: string): string {
  const drop = new Set(['-ffreestanding', '-nostdlib', '-static', '-ffunction-sections', '-fdata-sections', '-mno-80387']);
  const flags = (CFLAGS as string[]).filter((f) => !drop.has(f) && !f.startsWith('-Wl,')).map((f) => (f === '-O2' ? opt : f));
  gcc([...flags, ...sources, '-o', out], out);
  return out;
}

/** "" when equal, else where two outputs first differ (one line for a failure message). */
export function firstDifference(expected: string, actual: string): string {
  if (expected === actual) return '';
  const e = expected.split('\n'), a = actual.split('\n');
  for (let i = 0; i < Math.max(e.length, a.length); i++) {
    if (e[i] !== a[i]) return `line ${i + 1}: expected ${JSON.stringify(e[i] ?? '<end>')}, got ${JSON.stringify(a[i] ?? '<end>')} (${e.length} vs ${a.length} lines)`;
  }
  return 'differ';
}
