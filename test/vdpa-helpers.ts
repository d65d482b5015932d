// Shared by the embedded-device tests: a daemon started from the build copy, errno of a call, and
// a frame loop-back check.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SyscallError } from '../src/libc.js';
import { bringUp, kick, ringArea, waitFor, type DriverMemory } from '../devices/vdpa/driver.js';
import { defaultDaemonLog, type StartVdpaOptions, type VdpaDaemon } from '../devices/vdpa/launch.js';
import { BUILD, tempDir } from './harness.js';

/**
 * startVdpaDaemon of the run's build copy (so the daemon runs from it, not from a dist/ that may be
 * rebuilt), mounted at `dir` (default: mnt/ in a scratch directory) with its log beside the mount.
 */
export async function startDaemon(o: Omit<StartVdpaOptions, 'dir'> & { dir?: string }): Promise<VdpaDaemon> {
  const { startVdpaDaemon } = await import(join(BUILD, 'dist/devices/vdpa/launch.js')) as typeof import('../devices/vdpa/launch.js');
  const base = tempDir('minivmm-vdpa-test-');
  return startVdpaDaemon({ dir: join(base, 'mnt'), logFile: join(base, 'daemon.log'), ...o });
}

/**
 * Resolves once the daemon serving `dir` (started by a VM: it logs to defaultDaemonLog) has logged
 * a line matching `re`, e.g. that it now holds an injected delay: the event a test waits for
 * instead of sleeping while the device is busy.
 */
export async function daemonLogged(dir: string, re: RegExp, timeoutMs = 20_000): Promise<void> {
  const file = defaultDaemonLog(dir);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let text = '';
    try { text = readFileSync(file, 'utf8'); } catch { /* not yet */ }
    if (re.test(text)) return;
    if (Date.now() > deadline) throw new Error(`the vdpa daemon did not log ${re} within ${timeoutMs} ms; its log: ${text.slice(-400)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** 'OK' or the errno name a call failed with. */
export const errnoOf = (f: () => unknown): string => {
  try { f(); return 'OK'; } catch (e) { if (e instanceof SyscallError) return e.code; throw e; }
};

/**
 * Sends `n` broadcast frames (net header, destination ff:..:ff, a 4-byte tag: 22 bytes, past
 * vdpa_sim_net's receive filter) on TX and checks they come back on RX, tagged `tag + i` (device up).
 */
export function loopback(qs: ReturnType<typeof bringUp>, mem: DriverMemory, n: number, tag = 0xc0de0000, timeoutMs = 5000): boolean {
  const [rx, tx] = qs, base = ringArea(3);
  rx.ring.collect(); tx.ring.collect();
  const start = rx.ring.usedIdx();
  for (let i = 0; i < n; i++) rx.ring.add([{ off: base + i * 2048, len: 2048, write: true }]);
  rx.ring.publish(); kick(rx.kick);
  const tb = base + 64 * 2048;
  for (let i = 0; i < n; i++) {
    mem.buf.fill(0, tb + i * 128, tb + i * 128 + 12); mem.buf.fill(0xff, tb + i * 128 + 12, tb + i * 128 + 18);
    mem.buf.writeUInt32LE(tag + i, tb + i * 128 + 18);
    tx.ring.add([{ off: tb + i * 128, len: 22, write: false }]);
  }
  tx.ring.publish(); kick(tx.kick);
  if (!waitFor(() => ((rx.ring.usedIdx() - start) & 0xffff) === n, timeoutMs)) return false;
  return rx.ring.collect().every((u, i) => u.len === 22 && mem.buf.readUInt32LE(base + u.head * 2048 + 18) === tag + i);
}
