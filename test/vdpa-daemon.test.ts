// The embedded vhost-vdpa daemon: lifecycle through the UAPI, data path loopback (net, blk; va,
// pa), ownership across processes, stop and restart over a stale mount.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { errnoOf, startDaemon } from './vdpa-helpers.js';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeWith } from './facility.js';
import { BUILD, tempDir } from './harness.js';
import { open, close, ioctl, ioctlBuf, O_RDWR } from '../src/libc.js';
import { BACKEND_F, IOTLB, VHOST, vhost } from '../src/vhost.js';
import type { VdpaDaemon } from '../devices/vdpa/launch.js';
import { DriverMemory, bringUp, kick, ringArea, waitFor, closeQueues, type Queue } from '../devices/vdpa/driver.js';

describeWith(['fuse', 'root'], 'vdpa daemon', () => {
  let d: VdpaDaemon;
  const dev = (name: string) => d.pathOf(name);

  beforeAll(async () => {
    d = await startDaemon({
      devices: [
        { name: 'net-va', type: 'net', dma: 'va' }, { name: 'net-pa', type: 'net', dma: 'pa' },
        { name: 'blk-va', type: 'blk', dma: 'va' }, { name: 'blk-pa', type: 'blk', dma: 'pa' },
        { name: 'net-up', type: 'net', dma: 'va', model: 'no-new-owner' },
      ],
    });
  });
  afterAll(async () => { await d?.stop(); });

  it('the faults file arms injections; a bad line is refused with EINVAL and arms nothing', () => {
    const faults = join(d.dir, 'faults');
    const refused = (text: string) => { try { writeFileSync(faults, text); return 'OK'; } catch (e) { return (e as NodeJS.ErrnoException).code; } };
    for (const bad of ['nosuch new-owner EBUSY', 'net-va frobnicate EBUSY', 'net-va new-owner ENOTANERRNO', 'net-va new-owner EBUSY 0',
      'net-va remap delay:0', 'net-va remap delay:999999', 'net-va new-owner EBUSY 1 extra', 'net-pa update ENOMEM\nnet-va remap']) {
      expect(refused(bad), bad).toBe('EINVAL');
    }
    expect(d.status().devices.every((x) => Object.keys(x.faults).length === 0)).toBe(true);
    expect(refused('net-up new-owner EBUSY 2\nblk-pa suspend delay:5')).toBe('OK');
    expect(JSON.parse(readFileSync(faults, 'utf8'))).toMatchObject({ 'net-up': { 'new-owner': { errno: 'EBUSY', times: 2 } }, 'blk-pa': { suspend: { delayMs: 5, times: 1 } } });
    expect(refused('net-up new-owner off\nblk-pa suspend off')).toBe('OK');
    expect(d.status().devices.every((x) => Object.keys(x.faults).length === 0)).toBe(true);
  });

  it('serves one file per device and a status file', () => {
    // named vhost-vdpa-N, as the kernel's nodes, in the order given
    expect(d.paths.map((p) => p.split('/').pop())).toEqual(['vhost-vdpa-0', 'vhost-vdpa-1', 'vhost-vdpa-2', 'vhost-vdpa-3', 'vhost-vdpa-4']);
    const st = d.status();
    expect(st.pid).toBe(d.pid);
    expect(st.devices.map((x) => [x.name, x.advertisedBackendFeatures])).toEqual([
      ['net-va', '0x77e'], ['net-pa', '0x37e'], ['blk-va', '0x77e'], ['blk-pa', '0x37e'], ['net-up', '0x17e'],
    ]);
  });

  it('walks the unowned, owned and status ioctls with the kernel errnos', () => {
    const fd = open(dev('net-va'), O_RDWR);
    try {
      expect(errnoOf(() => open(dev('net-va'), O_RDWR))).toBe('EBUSY');
      expect(vhost.getDeviceId(fd)).toBe(1);
      expect(vhost.getFeatures(fd)).toBe(0x308830028n);
      expect(vhost.getVringNum(fd)).toBe(256);
      expect(vhost.getConfigSize(fd)).toBe(24);
      expect(vhost.getVqsCount(fd)).toBe(3);
      expect(vhost.getAsNum(fd)).toBe(2);
      expect(vhost.getIovaRange(fd)).toEqual({ first: 0n, last: (1n << 64n) - 1n });
      expect(vhost.getStatus(fd)).toBe(0);
      expect(vhost.getConfig(fd, 6, 2).readUInt16LE(0)).toBe(1); // link up
      // unowned
      expect(errnoOf(() => vhost.setVringNum(fd, 0, 256))).toBe('EPERM');
      expect(errnoOf(() => vhost.getVringBase(fd, 0))).toBe('EPERM');
      expect(errnoOf(() => vhost.iotlb(fd, { type: IOTLB.UPDATE, iova: 0n, size: 4096n, uaddr: 0n, perm: 3 }))).toBe('EFAULT');
      expect(errnoOf(() => ioctl('0xaf27', fd, VHOST.NEW_OWNER))).toBe('EINVAL'); // patched: unowned
      expect(errnoOf(() => vhost.setBackendFeatures(fd, 0xen))).toBe('OK');
      // owned
      vhost.setOwner(fd);
      expect(errnoOf(() => vhost.setOwner(fd))).toBe('EBUSY');
      expect(errnoOf(() => vhost.newOwner(fd))).toBe('EBUSY');
      expect(errnoOf(() => ioctl('RESET_OWNER', fd, VHOST.RESET_OWNER))).toBe('EFAULT');
      expect(errnoOf(() => ioctlBuf('SET_LOG_FD', fd, VHOST.SET_LOG_FD, Buffer.alloc(4)))).toBe('ENOTTY');
      expect(errnoOf(() => ioctlBuf('SET_LOG_BASE', fd, VHOST.SET_LOG_BASE, Buffer.alloc(8)))).toBe('ENOTTY');
      expect(errnoOf(() => vhost.setVringNum(fd, 3, 256))).toBe('ENOBUFS');
      expect(errnoOf(() => vhost.setVringNum(fd, 0, 100))).toBe('EINVAL');
      expect(errnoOf(() => vhost.setVringNum(fd, 0, 256))).toBe('OK');
      expect(vhost.getVringBase(fd, 0)).toBe(0);
      expect(errnoOf(() => vhost.setVringKick(fd, 0, 9999))).toBe('EBADF');
      expect(errnoOf(() => vhost.setVringKick(fd, 0, fd))).toBe('EINVAL'); // not an eventfd
      expect(errnoOf(() => vhost.setBackendFeatures(fd, 0x801n))).toBe('EOPNOTSUPP');
      expect(errnoOf(() => vhost.setBackendFeatures(fd, 0x60en))).toBe('OK'); // patched: 9/10 accepted
      // status walk
      vhost.setStatus(fd, 1); vhost.setStatus(fd, 3);
      expect(errnoOf(() => vhost.setStatus(fd, 1))).toBe('EINVAL');
      expect(vhost.getStatus(fd)).toBe(3);
      vhost.setFeatures(fd, (1n << 32n) | (1n << 33n));
      vhost.setStatus(fd, 0x0b);
      expect(errnoOf(() => vhost.setFeatures(fd, 1n << 33n))).toBe('EBUSY');
      expect(errnoOf(() => vhost.suspend(fd))).toBe('OK'); // no DRIVER_OK: no-op
      vhost.setStatus(fd, 0);
      expect(vhost.getStatus(fd)).toBe(0);
      // IOTLB write parsing
      const short = Buffer.alloc(39); short.writeUInt32LE(2, 0);
      expect(errnoOf(() => execWrite(fd, short))).toBe('EINVAL');
      expect(errnoOf(() => vhost.iotlb(fd, { type: IOTLB.UPDATE, iova: 0x1000n, size: 0n, uaddr: 0n, perm: 3 }))).toBe('EINVAL');
      expect(errnoOf(() => vhost.iotlb(fd, { type: IOTLB.INVALIDATE, iova: 0n, size: 4096n, uaddr: 0n, perm: 0 }))).toBe('EFAULT'); // no AS yet
      const st = d.status().devices[0];
      expect(st.open).toBe(true);
      expect(st.owner?.pid).toBe(process.pid);
    } finally { close(fd); }
    // release resets: reopen works, unowned again
    expect(waitFor(() => !d.status().devices[0].open)).toBe(true);
    const fd2 = open(dev('net-va'), O_RDWR);
    try {
      expect(vhost.getStatus(fd2)).toBe(0);
      expect(errnoOf(() => vhost.setVringNum(fd2, 0, 256))).toBe('EPERM');
    } finally { close(fd2); }
  });

  it('answers as upstream with the no-new-owner model', () => {
    const fd = open(dev('net-up'), O_RDWR);
    try {
      expect(vhost.getBackendFeatures(fd)).toBe(0x17en);
      expect(errnoOf(() => ioctl('0xaf27', fd, VHOST.NEW_OWNER))).toBe('EPERM');
      expect(errnoOf(() => vhost.setBackendFeatures(fd, 0x17en | BACKEND_F.NEW_OWNER))).toBe('EOPNOTSUPP');
      expect(errnoOf(() => vhost.setBackendFeatures(fd, 0x17en | BACKEND_F.IOTLB_REMAP))).toBe('EOPNOTSUPP');
      vhost.setOwner(fd);
      expect(errnoOf(() => ioctl('0xaf27', fd, VHOST.NEW_OWNER))).toBe('EFAULT');
    } finally { close(fd); }
  });

  it('owner is the address space: another process holding the fd is not the owner until NEW_OWNER', async () => {
    const fd = open(dev('net-pa'), O_RDWR);
    const mem = new DriverMemory(1 << 20);
    try {
      vhost.setOwner(fd);
      mem.update(fd);
      const pinned = d.status().devices[1].pinnedPages;
      expect(pinned).toBe(256);
      expect(d.status().vmPin.find((v) => v.pid === process.pid)?.pages).toBe(256);
      const script = `
        import { vhost } from ${JSON.stringify(join(BUILD, 'dist/src/vhost.js'))};
        const r = {};
        const t = (k, f) => { try { f(); r[k] = 'OK'; } catch (e) { r[k] = e.code ?? e.message; } };
        t('getStatus', () => vhost.getStatus(3));
        t('setOwner', () => vhost.setOwner(3));
        t('setVringNum', () => vhost.setVringNum(3, 0, 256));
        t('update', () => vhost.iotlb(3, { type: 2, iova: 0x90000000n, size: 4096n, uaddr: 0x1000n, perm: 3 }));
        t('newOwner', () => vhost.newOwner(3));
        t('setVringNumAfter', () => vhost.setVringNum(3, 0, 256));
        t('newOwnerAgain', () => vhost.newOwner(3));
        console.log(JSON.stringify(r));`;
      const out = await new Promise<string>((res, rej) => {
        const c = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit', fd] });
        let s = '';
        c.stdout!.on('data', (b) => { s += b; });
        c.on('exit', (st) => (st === 0 ? res(s) : rej(new Error(`child exited ${st}`))));
      });
      expect(JSON.parse(out)).toEqual({
        getStatus: 'OK', setOwner: 'EBUSY', setVringNum: 'EPERM', update: 'EFAULT', newOwner: 'OK', setVringNumAfter: 'OK', newOwnerAgain: 'EBUSY',
      });
      // the child owned it (and its VmPin got the device's pins); it has exited, we are not the owner
      expect(errnoOf(() => vhost.setVringNum(fd, 0, 256))).toBe('EPERM');
      expect(d.status().vmPin.find((v) => v.pid === process.pid)).toBeUndefined();
      vhost.newOwner(fd); // take it back
      expect(errnoOf(() => vhost.setVringNum(fd, 0, 256))).toBe('OK');
      expect(d.status().vmPin.find((v) => v.pid === process.pid)?.pages).toBe(256);
    } finally { close(fd); mem.free(); }
    expect(waitFor(() => d.status().vmPin.length === 0 && !d.status().devices[1].open)).toBe(true);
  });

  for (const dma of ['va', 'pa'] as const) {
    it(`net ${dma}: frames sent on TX come back on RX`, () => {
      const fd = open(dev(`net-${dma}`), O_RDWR);
      const mem = new DriverMemory(2 << 20);
      let qs: Queue[] = [];
      try {
        qs = bringUp(fd, mem, 3);
        const [rx, tx] = qs;
        const base = ringArea(3);
        for (let i = 0; i < 32; i++) rx.ring.add([{ off: base + i * 2048, len: 2048, write: true }]);
        rx.ring.publish(); kick(rx.kick);
        const txBase = base + 64 * 2048;
        // broadcast frames (vdpa_sim_net's receive filter drops unicast to other MACs)
        const frames = Array.from({ length: 20 }, (_, i) => Buffer.concat([Buffer.alloc(12), Buffer.alloc(6, 0xff), Buffer.from(`frame ${i} `.repeat(i + 1))]));
        let off = txBase;
        for (const f of frames) {
          f.copy(mem.buf, off);
          // split every frame over two descriptors (header, payload)
          tx.ring.add([{ off, len: 12, write: false }, { off: off + 12, len: f.length - 12, write: false }]);
          off += 4096;
        }
        tx.ring.publish(); kick(tx.kick);
        expect(waitFor(() => rx.ring.usedIdx() === 20)).toBe(true);
        expect(waitFor(() => tx.ring.usedIdx() === 20)).toBe(true);
        const used = rx.ring.collect();
        used.forEach((u, i) => {
          expect(u.len).toBe(frames[i].length);
          expect(mem.buf.subarray(base + u.head * 2048, base + u.head * 2048 + u.len)).toEqual(frames[i]);
        });
        const st = d.status().devices.find((x) => x.name === `net-${dma}`)!;
        expect(st.vqs[0].used_idx).toBe(20);
        expect(st.vqs[1].last_avail).toBe(20);
        expect(st.counters.framesLooped).toBeGreaterThanOrEqual(20);
        expect(st.counters.calls).toBeGreaterThan(0);
        // suspended: a kick is held until RESUME, GET_VRING_BASE gives last_avail
        vhost.suspend(fd);
        const f = Buffer.concat([Buffer.alloc(12), Buffer.alloc(6, 0xff), Buffer.from('after resume')]);
        f.copy(mem.buf, txBase);
        tx.ring.collect();
        tx.ring.add([{ off: txBase, len: f.length, write: false }]); tx.ring.publish(); kick(tx.kick);
        expect(waitFor(() => rx.ring.usedIdx() === 21, 300)).toBe(false);
        expect(vhost.getVringBase(fd, 1)).toBe(20);
        vhost.resume(fd);
        expect(waitFor(() => rx.ring.usedIdx() === 21)).toBe(true);
        const [u] = rx.ring.collect();
        expect(mem.buf.subarray(base + u.head * 2048 + 18, base + u.head * 2048 + u.len).toString()).toBe('after resume');
      } finally { closeQueues(qs); close(fd); mem.free(); }
    });

    it(`blk ${dma}: written sectors read back`, () => {
      const fd = open(dev(`blk-${dma}`), O_RDWR);
      const mem = new DriverMemory(2 << 20);
      let qs: Queue[] = [];
      try {
        expect(vhost.getDeviceId(fd)).toBe(2);
        qs = bringUp(fd, mem, 1);
        const [q] = qs;
        expect(vhost.getConfig(fd, 0, 8).readBigUInt64LE(0)).toBe(BigInt((128 << 20) / 512));
        const base = ringArea(1), hdr = base, data = base + 4096, st = base + 3 * 4096, back = base + 4 * 4096;
        const pattern = Buffer.alloc(8192);
        for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + 3) & 0xff;
        const req = (type: number, sector: number, dataOff: number, len: number, write: boolean, slot: number) => {
          mem.buf.writeUInt32LE(type, hdr + 32 * slot); mem.buf.writeUInt32LE(0, hdr + 32 * slot + 4);
          mem.buf.writeBigUInt64LE(BigInt(sector), hdr + 32 * slot + 8);
          mem.buf[st + slot] = 0xff;
          const chain = [{ off: hdr + 32 * slot, len: 16, write: false }];
          if (len) chain.push({ off: dataOff, len, write });
          chain.push({ off: st + slot, len: 1, write: true });
          q.ring.add(chain);
        };
        pattern.copy(mem.buf, data);
        req(1, 1000, data, 8192, false, 0); // OUT
        req(4, 0, 0, 0, false, 1); // FLUSH
        q.ring.publish(); kick(q.kick);
        expect(waitFor(() => q.ring.usedIdx() === 2)).toBe(true);
        expect([mem.buf[st], mem.buf[st + 1]]).toEqual([0, 0]);
        q.ring.collect();
        req(0, 1000, back, 8192, true, 2); // IN
        req(0, (128 << 20) / 512, back, 512, true, 3); // past the end: IOERR
        req(8, 0, back + 8192, 20, true, 4); // GET_ID
        req(99, 0, 0, 0, false, 5); // unknown type: IOERR, as vdpa_sim_blk (not UNSUPP)
        q.ring.publish(); kick(q.kick);
        expect(waitFor(() => q.ring.usedIdx() === 6)).toBe(true);
        const used = q.ring.collect();
        expect(used.map((u) => u.len)).toEqual([8193, 1, 21, 1]);
        expect([mem.buf[st + 2], mem.buf[st + 3], mem.buf[st + 4], mem.buf[st + 5]]).toEqual([0, 1, 0, 1]);
        expect(mem.buf.subarray(back, back + 8192)).toEqual(pattern);
        expect(mem.buf.subarray(back + 8192, back + 8192 + 20)).toEqual(Buffer.from('vdpa_blk_sim\0\0\0\0\0\0\0\0'));

        // DISCARD 11 / WRITE_ZEROES 13: one 16-byte {sector, num_sectors, flags} segment each.
        const segs = base + 8 * 4096, end = (128 << 20) / 512;
        const dwz = (type: number, sector: number, n: number, flags: number, slot: number, len = 16) => {
          const at = segs + 16 * slot;
          mem.buf.writeBigUInt64LE(BigInt(sector), at); mem.buf.writeUInt32LE(n, at + 8); mem.buf.writeUInt32LE(flags, at + 12);
          req(type, 0, at, len, false, slot);
        };
        dwz(13, 1004, 4, 0, 6); // zeroes sectors 1004..1007
        dwz(11, 1008, 4, 0, 7); // discard: OK, the data stays
        dwz(13, 1010, 1, 1, 8); // UNMAP is allowed: zeroes sector 1010
        dwz(11, 1000, 1, 1, 9); // DISCARD with a flag: UNSUPP
        dwz(13, 1000, 1, 2, 10); // WRITE_ZEROES with an undefined flag: UNSUPP
        dwz(13, end - 1, 2, 0, 11); // past the end: IOERR
        dwz(11, end, 0, 0, 12); // start at the end: IOERR even for 0 sectors
        dwz(13, 1000, 1, 0, 13, 8); // short segment: IOERR
        req(4, 5, 0, 0, false, 14); // FLUSH with a sector: IOERR
        q.ring.publish(); kick(q.kick);
        expect(waitFor(() => q.ring.usedIdx() === 15)).toBe(true);
        expect(q.ring.collect().map((u) => u.len)).toEqual(Array(9).fill(1));
        expect([...mem.buf.subarray(st + 6, st + 15)]).toEqual([0, 0, 0, 2, 2, 1, 1, 1, 1]);
        mem.buf.fill(0xaa, back, back + 8192);
        req(0, 1000, back, 8192, true, 15);
        q.ring.publish(); kick(q.kick);
        expect(waitFor(() => q.ring.usedIdx() === 16)).toBe(true);
        q.ring.collect();
        const want = Buffer.from(pattern);
        want.fill(0, 4 * 512, 8 * 512); want.fill(0, 10 * 512, 11 * 512);
        expect(mem.buf.subarray(back, back + 8192)).toEqual(want);
        const s = d.status().devices.find((x) => x.name === `blk-${dma}`)!;
        expect(s.counters.blocksWritten).toBe(16);
        expect(s.counters.blocksRead).toBe(32);
      } finally { closeQueues(qs); close(fd); mem.free(); }
    });
  }
});

/** A raw write() of arbitrary bytes to the device. */
function execWrite(fd: number, b: Buffer): void {
  // vhost.iotlb always writes 72 bytes; use libc write for other lengths
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  writeRaw(fd, b);
}
import { write as libcWrite } from '../src/libc.js';
const writeRaw = (fd: number, b: Buffer) => libcWrite('write', fd, b);

describeWith(['fuse', 'root'], 'vdpa daemon process', () => {
  it('stop unmounts and leaves no process; a restart over a stale mount works', async () => {
    const dir = join(tempDir('vdpa-stale-'), 'mnt');
    const devices = [{ name: 'n', type: 'net' as const, dma: 'va' as const }];
    const a = await startDaemon({ dir, devices });
    process.kill(a.pid, 'SIGKILL');
    expect(waitFor(() => { try { statSync(dir); return false; } catch (e) { return (e as NodeJS.ErrnoException).code === 'ENOTCONN'; } })).toBe(true);
    const b = await startDaemon({ dir, devices });
    const fd = open(b.pathOf('n'), O_RDWR);
    expect(vhost.getDeviceId(fd)).toBe(1);
    close(fd);
    await b.stop();
    expect(existsSync(`/proc/${b.pid}`) && !readFileSync(`/proc/${b.pid}/stat`, 'utf8').includes(') Z')).toBe(false);
    expect(readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${dir} `)).toBe(false);
    const { daemonScript } = await import(join(BUILD, 'dist/devices/vdpa/launch.js')) as typeof import('../devices/vdpa/launch.js');
    expect(daemonScript()).toBe(join(BUILD, 'dist/devices/vdpa/daemon-main.js'));
  });
});
