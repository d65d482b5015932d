// Gate tests on host facilities. Under CI=true a missing facility is a failure, not a skip.
import { accessSync, constants } from 'node:fs';
import { describe, it } from 'vitest';
import { EmuAccelerator } from '../src/accel/emu/index.js';

const checks: Record<string, () => string | null> = {
  kvm: () => { try { accessSync('/dev/kvm', constants.R_OK | constants.W_OK); return null; } catch { return 'no usable /dev/kvm'; } },
  fuse: () => { try { accessSync('/dev/fuse', constants.R_OK | constants.W_OK); return null; } catch { return 'no usable /dev/fuse'; } },
  root: () => (process.getuid?.() === 0 ? null : 'not running as root'),
  emu: () => { try { EmuAccelerator.open(); return null; } catch (e) { return (e as Error).message; } },
};

/** Returns the reason the facilities are missing, or null. Throws under CI=true. */
export function missing(...needs: (keyof typeof checks)[]): string | null {
  const reasons = needs.map((n) => checks[n]()).filter((r): r is string => r !== null);
  if (reasons.length === 0) return null;
  if (process.env.CI === 'true') throw new Error(`required facility missing under CI: ${reasons.join(', ')}`);
  return reasons.join(', ');
}

/**
 * describe() that skips with a one-line reason outside CI, and fails under CI, when facilities
 * are missing; it never throws while tests are collected (that would hide the other tests).
 */
export function describeWith(needs: (keyof typeof checks)[], name: string, fn: () => void): void {
  const reason = needs.map((n) => checks[n]()).filter((r): r is string => r !== null).join(', ');
  if (!reason) describe(name, fn);
  else if (process.env.CI === 'true') describe(name, () => { it('has its facilities', () => { throw new Error(`required facility missing under CI: ${reason}`); }); });
  else describe.skip(`${name} (skipped: ${reason})`, fn);
}
