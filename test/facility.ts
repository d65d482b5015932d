// Gate tests on host facilities. Under CI=true a missing facility is a failure, not a skip.
import { accessSync, constants } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'vitest';

const checks: Record<string, () => string | null> = {
  kvm: () => { try { accessSync('/dev/kvm', constants.R_OK | constants.W_OK); return null; } catch { return 'no usable /dev/kvm'; } },
  fuse: () => { try { accessSync('/dev/fuse', constants.R_OK | constants.W_OK); return null; } catch { return 'no usable /dev/fuse'; } },
  root: () => (process.getuid?.() === 0 ? null : 'not running as root'),
  // The reference QMP server (Debian: qemu-system-x86).
  qemu: () => (spawnSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' }).status === 0 ? null : 'no qemu-system-x86_64 in PATH'),
};

function reasonMissing(needs: (keyof typeof checks)[]): string | null {
  const reasons = needs.map((n) => checks[n]()).filter((r): r is string => r !== null);
  return reasons.length ? reasons.join(', ') : null;
}

/** Returns the reason the facilities are missing, or null. Throws under CI=true. */
export function missing(...needs: (keyof typeof checks)[]): string | null {
  const reason = reasonMissing(needs);
  if (reason && process.env.CI === 'true') throw new Error(`required facility missing under CI: ${reason}`);
  return reason;
}

/**
 * describe() that skips with a one-line reason outside CI, and fails (one failing test, not an
 * error at collection) under CI, when facilities are missing.
 */
export function describeWith(needs: (keyof typeof checks)[], name: string, fn: () => void): void {
  const reason = reasonMissing(needs);
  if (!reason) describe(name, fn);
  else if (process.env.CI === 'true') describe(name, () => { it('has its facilities', () => { throw new Error(`required facility missing under CI: ${reason}`); }); });
  else describe.skip(`${name} (skipped: ${reason})`, fn);
}
