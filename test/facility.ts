// Gate tests on host facilities. Under CI=true a missing facility is a failure, not a skip.
import { accessSync, constants } from 'node:fs';
import { describe } from 'vitest';

const checks: Record<string, () => string | null> = {
  kvm: () => { try { accessSync('/dev/kvm', constants.R_OK | constants.W_OK); return null; } catch { return 'no usable /dev/kvm'; } },
  fuse: () => { try { accessSync('/dev/fuse', constants.R_OK | constants.W_OK); return null; } catch { return 'no usable /dev/fuse'; } },
  root: () => (process.getuid?.() === 0 ? null : 'not running as root'),
};

/** Returns the reason the facilities are missing, or null. Throws under CI=true. */
export function missing(...needs: (keyof typeof checks)[]): string | null {
  const reasons = needs.map((n) => checks[n]()).filter((r): r is string => r !== null);
  if (reasons.length === 0) return null;
  if (process.env.CI === 'true') throw new Error(`required facility missing under CI: ${reasons.join(', ')}`);
  return reasons.join(', ');
}

/** describe() that skips with a one-line reason outside CI, and fails under CI, when facilities are missing. */
export function describeWith(needs: (keyof typeof checks)[], name: string, fn: () => void): void {
  const reason = missing(...needs);
  if (reason) describe.skip(`${name} (skipped: ${reason})`, fn);
  else describe(name, fn);
}
