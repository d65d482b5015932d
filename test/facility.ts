// Gate tests on host facilities. Nothing here throws while vitest collects the tests: a missing
// facility makes its tests skip with one printed line, or, under CI=true for a facility CI must
// have, fail with the reason. Guests run on the accelerator MINIVMM_ACCEL names (default auto:
// KVM when /dev/kvm opens, the emulator otherwise), so a machine without /dev/kvm runs them too.
import { accessSync, constants } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'vitest';
import { openAccelerator, isAccelChoice } from '../src/accel/select.js';
import type { AccelKind } from '../src/accel/index.js';

export const ACCEL_CHOICE = process.env.MINIVMM_ACCEL ?? 'auto';

/** The accelerator guests run on in this test run, or why there is none. */
async function probeAccel(): Promise<{ kind?: AccelKind; reason?: string }> {
  if (!isAccelChoice(ACCEL_CHOICE)) return { reason: `MINIVMM_ACCEL=${ACCEL_CHOICE} is not kvm, emu or auto` };
  try { return { kind: (await openAccelerator(ACCEL_CHOICE)).accel.kind }; } catch (e) { return { reason: `no accelerator for MINIVMM_ACCEL=${ACCEL_CHOICE}: ${(e as Error).message}` }; }
}
const accel = await probeAccel();
/** Why KVM cannot run here (its own one-line reason: no /dev/kvm, or one that answers no KVM ioctl), or null. */
const kvmReason = (await import('../src/accel/kvm.js')).KvmAccelerator.unavailable();
/** Why the emulator cannot run here (its own one-line reason), or null. */
const emuReason = await (async () => {
  try { (await import('../src/accel/emu/index.js')).EmuAccelerator.open(); return null; } catch (e) { return (e as Error).message; }
})();
/** Which accelerator runs the guests ('kvm' or 'emu'), undefined if none can. */
export const ACCEL: AccelKind | undefined = accel.kind;

const usable = (path: string): boolean => { try { accessSync(path, constants.R_OK | constants.W_OK); return true; } catch { return false; } };

/** Each facility: how to tell it is missing, and whether CI must have it. */
const checks = {
  /** An accelerator for the guests (CI must have one: the project installs the emulator). */
  guest: { ci: true, missing: () => accel.reason ?? null },
  /** KVM itself, for tests about KVM (a CI machine may lack it: they skip). */
  kvm: { ci: false, missing: () => kvmReason },
  /** The emulator itself, for tests about it (CI must have it: the project installs it). */
  emu: { ci: true, missing: () => emuReason },
  fuse: { ci: true, missing: () => (usable('/dev/fuse') ? null : 'no usable /dev/fuse') },
  root: { ci: true, missing: () => (process.getuid?.() === 0 ? null : 'not running as root') },
  /** The reference QMP server (Debian: qemu-system-x86; .ci/run installs it). */
  qemu: { ci: true, missing: () => (spawnSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' }).status === 0 ? null : 'no qemu-system-x86_64 in PATH') },
};
export type Facility = keyof typeof checks;

const underCi = process.env.CI === 'true';

/** The reasons `needs` are missing, split into those that fail under CI and those that skip. */
function reasons(needs: Facility[]): { fatal: string[]; skip: string[] } {
  const fatal: string[] = [], skip: string[] = [];
  for (const n of needs) {
    const r = checks[n].missing();
    if (r) (underCi && checks[n].ci ? fatal : skip).push(r);
  }
  return { fatal, skip };
}

/** Why the facilities are missing (joined), or null: for tests that decide inside a test body. */
export function missing(...needs: Facility[]): string | null {
  const { fatal, skip } = reasons(needs);
  return [...fatal, ...skip].join(', ') || null;
}

/**
 * describe() that runs when `needs` are present. Otherwise, under CI=true with a facility CI must
 * have: one failing test naming it; else the block is skipped and one line says what is missing.
 */
export function describeWith(needs: Facility[], name: string, fn: () => void): void {
  const { fatal, skip } = reasons(needs);
  if (fatal.length) {
    describe(name, () => { it(`needs ${needs.join(', ')}`, () => { throw new Error(`required facility missing under CI: ${fatal.join(', ')}`); }); });
  } else if (skip.length) {
    process.stdout.write(`skip: ${name}: ${skip.join(', ')}\n`);
    describe.skip(`${name} (skipped: ${skip.join(', ')})`, fn);
  } else describe(name, fn);
}
