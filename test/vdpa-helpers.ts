// Shared by the embedded-device tests: errno of a call, and a frame loop-back check.
import { SyscallError } from '../src/libc.js';
import { bringUp, kick, ringArea, waitFor, type DriverMemory } from '../devices/vdpa/driver.js';

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
