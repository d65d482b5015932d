// ≥ 10,000 malformed requests against the vdpa daemon, each answered with the kernel's errno; a
// client killed mid-operation; afterwards the devices still loop frames back.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { errnoOf, loopback, startDaemon } from './vdpa-helpers.js';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describeWith } from './facility.js';
import { BUILD } from './harness.js';
import { open, close, ioctl, ioctlBuf, write, memfdCreate, O_RDWR } from '../src/libc.js';
import { IOTLB, VHOST, encodeIotlbMsg, vhost } from '../src/vhost.js';
import type { VdpaDaemon } from '../devices/vdpa/launch.js';
import { DriverMemory, bringUp, kick, ringArea, waitFor, closeQueues } from '../devices/vdpa/driver.js';

/** xorshift32: reproducible randomness (seed printed on failure). */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  const next = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
  return { u32: next, int: (n: number) => next() % n, pick: <T>(a: T[]): T => a[next() % a.length], big: () => (BigInt(next()) << 32n) | BigInt(next()) };
}
const ioc = (dir: number, nr: number, size: number) => ((dir << 30) | (size << 16) | (0xaf << 8) | nr) >>> 0;
const known = new Set<number>(Object.values(VHOST).map((c) => c & 0xff));
const unknownNrs = Array.from({ length: 256 }, (_, i) => i).filter((nr) => !known.has(nr) && ![0x13, 0x14, 0x23, 0x24, 0x27].includes(nr));

describeWith(['fuse', 'root'], 'vdpa daemon under malformed input', () => {
  let d: VdpaDaemon;
  beforeAll(async () => {
    d = await startDaemon({
      devices: [{ name: 'va', type: 'net', dma: 'va' }, { name: 'pa', type: 'net', dma: 'pa' }, { name: 'victim', type: 'net', dma: 'va' }],
    });
  });
  afterAll(async () => { await d?.stop(); });

  for (const dma of ['va', 'pa'] as const) {
    it(`${dma}: 5,000+ malformed requests each get the kernel's errno, then frames still loop`, () => {
      const seed = (Date.now() ^ (dma === 'va' ? 0x1234 : 0x4321)) >>> 0;
      const r = rng(seed);
      const fd = open(d.pathOf(dma), O_RDWR);
      const mem = new DriverMemory(1 << 20);
      const notEventfd = memfdCreate('not-an-eventfd', 1);
      const mismatches: string[] = [];
      let qs: ReturnType<typeof bringUp> = [];
      try {
        vhost.setOwner(fd);
        vhost.setBackendFeatures(fd, 0x6n); // MSG_V2 | BATCH: asid always 0
        mem.update(fd);
        vhost.setStatus(fd, 3);
        const msg = (type: number, iova: bigint, size: bigint, perm = 3, framing = 2) =>
          encodeIotlbMsg({ type, iova, size, uaddr: BigInt(mem.addr), perm, framing: framing as 1 | 2 });
        const cases: (() => [string, () => unknown, string])[] = [
          () => { const n = 1 + r.int(39); const b = Buffer.alloc(n); for (let i = 0; i < n; i++) b[i] = r.int(256); if (n >= 4 && r.int(2)) b.writeUInt32LE(1 + r.int(2), 0); return [`write ${n} bytes`, () => write('w', fd, b), 'EINVAL']; },
          () => { const b = Buffer.alloc(72); for (let i = 0; i < 72; i++) b[i] = r.int(256); let t = r.u32(); if (t === 1 || t === 2) t = 3; b.writeUInt32LE(t, 0); return [`framing ${t}`, () => write('w', fd, b), 'EINVAL']; },
          () => { const t = r.pick([0, 1, 4, ...Array.from({ length: 248 }, (_, i) => 8 + i)]); const b = msg(t, r.big(), r.big(), r.int(256), 1 + r.int(2)); return [`iotlb type ${t}`, () => write('w', fd, b), 'EFAULT']; },
          () => [`UPDATE size 0`, () => write('w', fd, msg(IOTLB.UPDATE, r.big(), 0n)), 'EINVAL'],
          () => [`UPDATE overflow`, () => write('w', fd, msg(IOTLB.UPDATE, (1n << 64n) - 4096n, 8192n + BigInt(r.int(1 << 20)))), 'EFAULT'],
          () => { const at = BigInt(mem.iovaBase + r.int(mem.size)); return [`UPDATE overlapping`, () => write('w', fd, msg(IOTLB.UPDATE, at, 4096n)), 'EFAULT']; },
          () => { const at = (1n << 63n) + (r.big() >> 2n); return [`INVALIDATE free range`, () => write('w', fd, msg(IOTLB.INVALIDATE, at, BigInt(1 + r.int(1 << 30)))), 'OK']; },
          () => [`REMAP perm != 0`, () => write('w', fd, msg(IOTLB.REMAP, BigInt(mem.iovaBase), BigInt(mem.size), 1 + r.int(3))), 'EFAULT'],
          () => { const nr = r.pick(unknownNrs); return [`_IO 0x${nr.toString(16)}`, () => ioctl('x', fd, ioc(0, nr, 0)), 'EFAULT']; },
          () => { const nr = r.pick([...unknownNrs, 0x13, 0x14]); const idx = r.int(2) ? r.int(3) : 3 + r.int(1 << 30); const b = Buffer.alloc(8); b.writeUInt32LE(idx, 0); return [`_IOW 0x${nr.toString(16)} idx ${idx}`, () => ioctlBuf('x', fd, ioc(1, nr, 8), b), idx < 3 ? 'ENOTTY' : 'ENOBUFS']; },
          () => { const idx = 3 + r.int(0xfffffff); const op = r.int(6); const f = [
            () => vhost.setVringNum(fd, idx, 256), () => vhost.getVringBase(fd, idx), () => vhost.setVringBase(fd, idx, 0),
            () => vhost.setVringKick(fd, idx, -1), () => vhost.setVringEnable(fd, idx, true),
            () => vhost.setVringAddr(fd, { index: idx, flags: 0, desc: 0n, used: 0n, avail: 0n, log: 0n })][op];
            return [`vring op ${op} idx ${idx}`, f, 'ENOBUFS']; },
          () => { let n = r.pick([0, 3, 100, 0x10000 + r.int(1000), 255, 0x20000]); if (n && !(n & (n - 1)) && n <= 0xffff) n = 0; return [`SET_VRING_NUM ${n}`, () => vhost.setVringNum(fd, r.int(3), n), 'EINVAL']; },
          () => [`SET_VRING_BASE big`, () => vhost.setVringBase(fd, r.int(3), 0x10000 + r.int(1 << 20)), 'EINVAL'],
          () => { const bad = r.int(2) ? 30000 + r.int(30000) : -2 - r.int(100); return [`KICK/CALL fd ${bad}`, () => (r.int(2) ? vhost.setVringKick : vhost.setVringCall)(fd, r.int(3), bad), 'EBADF']; },
          () => [`KICK memfd`, () => vhost.setVringCall(fd, r.int(3), notEventfd), 'EINVAL'],
          () => { let v = r.int(256); if (v === 0 || (3 & ~v) === 0) v = 0x10; return [`SET_STATUS ${v}`, () => vhost.setStatus(fd, v), 'EINVAL']; },
          () => { const k = r.int(3); const off = k === 0 ? r.int(24) : k === 1 ? 25 + r.int(1000) : r.int(24); const len = k === 0 ? 0 : k === 1 ? 1 : 25 - off + r.int(100);
            return [`GET_CONFIG ${off}/${len}`, () => vhost.getConfig(fd, off, len), 'EINVAL']; }, // len past the end too: vhost-vdpa turns E2BIG into EINVAL
          () => { const f = r.int(2) ? 1n | BigInt(r.u32() & 0x7fe) : (1n << BigInt(11 + r.int(53))) | BigInt(r.u32() & 0x7fe); return [`SET_BACKEND_FEATURES 0x${f.toString(16)}`, () => vhost.setBackendFeatures(fd, f), 'EOPNOTSUPP']; },
          () => { const b = Buffer.alloc(8); b.writeUInt32LE(r.int(3), 0); b.writeUInt32LE(2 + r.int(100), 4); return [`SET_GROUP_ASID`, () => ioctlBuf('x', fd, VHOST.VDPA_SET_GROUP_ASID, b), 'EINVAL']; },
          () => { const b = Buffer.alloc(8); b.writeUInt32LE(r.int(3), 0); return [`GET_VRING_DESC_GROUP`, () => ioctlBuf('x', fd, VHOST.VDPA_GET_VRING_DESC_GROUP, b), 'EOPNOTSUPP']; },
          () => [`SET_FEATURES without ACCESS_PLATFORM`, () => vhost.setFeatures(fd, r.big() & ~(1n << 33n)), 'EINVAL'],
        ];
        const N = 5200;
        for (let i = 0; i < N; i++) {
          const [what, f, want] = r.pick(cases)();
          const got = errnoOf(f);
          if (got !== want && mismatches.length < 20) mismatches.push(`${what}: got ${got}, want ${want}`);
        }
        expect(mismatches, `seed ${seed}`).toEqual([]);
        const st = d.status().devices.find((x) => x.name === dma)!;
        expect(st.counters.ioctls + st.counters.writes).toBeGreaterThanOrEqual(N);
        expect(st.status).toBe(3);
        expect(st.entries).toBe(1);
        // afterwards the device works normally
        vhost.setStatus(fd, 0); // clean-map reset (IOTLB_PERSIST not negotiated): the parent's view is emptied
        expect(d.status().devices.find((x) => x.name === dma)!.addressSpaces[0].parentEntries).toBe(0);
        vhost.iotlb(fd, { type: IOTLB.BATCH_BEGIN, iova: 0n, size: 0n, uaddr: 0n, perm: 0 });
        vhost.iotlb(fd, { type: IOTLB.BATCH_END, iova: 0n, size: 0n, uaddr: 0n, perm: 0 }); // pushes the kept IOTLB again
        qs = bringUp(fd, mem, 3, { owner: false, update: false });
        expect(loopback(qs, mem, 16)).toBe(true);
      } finally { closeQueues(qs); close(notEventfd); close(fd); mem.free(); }
    });
  }

  it('a client killed mid-operation leaves the device usable', async () => {
    const path = d.pathOf('victim');
    const script = `
      import { open, O_RDWR } from ${JSON.stringify(join(BUILD, 'dist/src/libc.js'))};
      import { vhost } from ${JSON.stringify(join(BUILD, 'dist/src/vhost.js'))};
      import { DriverMemory, bringUp } from ${JSON.stringify(join(BUILD, 'dist/devices/vdpa/driver.js'))};
      const fd = open(${JSON.stringify(path)}, O_RDWR);
      const mem = new DriverMemory(1 << 20);
      bringUp(fd, mem, 3);
      console.log('up');
      for (let i = 0; ; i++) {
        try { vhost.getVringBase(fd, i % 3); vhost.iotlb(fd, { type: 3, iova: 1n << 62n, size: 4096n, uaddr: 0n, perm: 0 }); vhost.setVringNum(fd, 7, 8); } catch {}
      }`;
    for (let round = 0; round < 3; round++) {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((res, rej) => {
        child.stdout!.on('data', (b) => { if (String(b).includes('up')) res(); });
        child.on('exit', (c) => rej(new Error(`child exited ${c}`)));
      });
      await new Promise((res) => setTimeout(res, 50 + 100 * round));
      child.removeAllListeners('exit');
      const gone = new Promise((res) => child.on('exit', res));
      child.kill('SIGKILL');
      await gone;
      // the release reaches the daemon shortly after the exit
      let fd = -1;
      expect(waitFor(() => { try { fd = open(path, O_RDWR); return true; } catch { return false; } }, 3000)).toBe(true);
      const mem = new DriverMemory(1 << 20);
      let qs: ReturnType<typeof bringUp> = [];
      try {
        expect(vhost.getStatus(fd)).toBe(0);
        expect(d.status().devices[2].entries).toBe(0);
        qs = bringUp(fd, mem, 3);
        expect(loopback(qs, mem, 8)).toBe(true);
      } finally { closeQueues(qs); close(fd); mem.free(); }
      expect(waitFor(() => !d.status().devices[2].open)).toBe(true);
    }
    expect(d.status().fuse.requests).toBeGreaterThan(0);
  });
});
