// Who is calling: a FUSE request names the calling *thread*; vhost-vdpa ownership belongs to an
// address space (mm), not to a pid.
//
// Method: an owner is identified by (tgid, fingerprint). The fingerprint is made of fields of
// /proc/PID/stat that describe the address-space layout chosen at exec time: start_code (26),
// start_stack (28), start_brk (47), arg_start (48) and env_start (50). Threads share one mm, so
// they share the fingerprint; a fork child copies the layout but has another tgid; an exec'd
// image keeps the pid but gets a fresh layout, so it becomes a different owner, as in the kernel.
// Assumption: ASLR is on (/proc/sys/kernel/randomize_va_space != 0), so that every exec moves the
// stack (and, at level 2, the brk and a PIE's code). With ASLR off two images of the same binary
// could share a fingerprint, so the daemon refuses to start then (checkAslr).
import { readFileSync } from 'node:fs';
import { prlimit, RLIMIT_MEMLOCK } from '../../src/libc.js';

export interface OwnerId { pid: number; fingerprint: string }
export const ownerKey = (o: OwnerId): string => `${o.pid}:${o.fingerprint}`;
export const sameOwner = (a: OwnerId | null, b: OwnerId | null): boolean =>
  !!a && !!b && a.pid === b.pid && a.fingerprint === b.fingerprint;

/** Throws a one-line error when address-space fingerprints would be unreliable. */
export function checkAslr(): void {
  const v = readFileSync('/proc/sys/kernel/randomize_va_space', 'utf8').trim();
  if (v === '0') throw new Error('vdpa daemon: ASLR is off (/proc/sys/kernel/randomize_va_space = 0); owners cannot be told apart across exec, refusing to start');
}

/** Thread id → process id (Tgid in /proc/TID/status); null if the thread is gone. */
export function tgidOf(tid: number): number | null {
  try {
    const m = /^Tgid:\s*(\d+)$/m.exec(readFileSync(`/proc/${tid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch { return null; /* no /proc entry: the thread is gone */ }
}

/** Address-space fingerprint of a process (see the header comment); null if gone or without an mm. */
export function fingerprintOf(pid: number): string | null {
  let stat: string;
  try { stat = readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { return null; /* gone */ }
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  const field = (n: number) => f[n - 3] ?? '0';
  const parts = [26, 28, 47, 48, 50].map((n) => Number(field(n)).toString(16));
  if (parts.every((p) => p === '0')) return null; // kernel thread, zombie, or no access
  return parts.join('-');
}

/** The caller of a request: its process and address space. */
export function callerOf(tid: number): OwnerId | null {
  const pid = tgidOf(tid);
  if (pid === null) return null;
  const fingerprint = fingerprintOf(pid);
  return fingerprint === null ? null : { pid, fingerprint };
}

/**
 * `--memlock-limit BYTES`: the RLIMIT_MEMLOCK every caller is taken to have, instead of its own.
 * Only for hosts where the limit cannot be raised (root without CAP_SYS_RESOURCE, as on this
 * project's machines, hard limit 8 MiB): it stands in for `ulimit -l`. A real kernel has no such
 * switch; the conformance suite runs without it.
 */
export const MEMLOCK_OVERRIDE_ENV = 'MINIVMM_VDPA_MEMLOCK_LIMIT';

/** The caller's RLIMIT_MEMLOCK (soft) in pages; Infinity if unlimited or unreadable. */
export function memlockPages(pid: number): number {
  const override = process.env[MEMLOCK_OVERRIDE_ENV];
  if (override) return Number(BigInt(override) >> 12n);
  try {
    const [soft] = prlimit(pid, RLIMIT_MEMLOCK);
    if (soft >= 0xffffffffffffffffn) return Infinity;
    return Number(soft >> 12n);
  } catch { return 0; /* the process is gone: it may lock nothing */ }
}
