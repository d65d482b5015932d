// Fuzz: device requests against the embedded vhost-vdpa daemon (a net,va and a net,pa device).
// Every vhost ioctl with random argument bytes, random ioctl numbers in the 0xAF space, random
// IOTLB messages (every field, V1/V2 framing, batches, REMAP), with no owner, from a non-owner
// while another process owns the device, and from the owner. Each request succeeds or fails with
// an errno the kernel could give; the daemon logs no internal exception; afterwards the device
// walks to DRIVER_OK and loops frames as usual. (test/vdpa-daemon-fuzz.test.ts checks the exact
// errno of specific malformed requests; this one covers the argument space.)
import { afterAll, beforeAll, expect, it } from 'vitest';
import { errnoOf, loopback, startDaemon } from './vdpa-helpers.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeWith } from './facility.js';
import { BUILD, tempDir } from './harness.js';
import { open, close, ioctlBuf, write, memfdCreate, eventfd, EFD_CLOEXEC, EFD_NONBLOCK, O_RDWR, SyscallError } from '../src/libc.js';
import { IOTLB, VHOST, vhost } from '../src/vhost.js';
import type { VdpaDaemon } from '../devices/vdpa/launch.js';
import { DriverMemory, bringUp, kick, ringArea, waitFor, closeQueues } from '../devices/vdpa/driver.js';
import { fuzzCases, fuzzSeed, rng, type Rng } from './fuzz/prng.js';
import { ALLOWED_ERRNOS, batchSequence, iotlbMessage, knownIoctl, randomIoctl } from './fuzz/vhost.js';

/** A second process that takes ownership of the fd we pass it, and holds it until told to go. */
function foreignOwner(fd: number): Promise<ChildProcess> {
  const script = `
    import { vhost } from ${JSON.stringify(join(BUILD, 'dist/src/vhost.js'))};
    vhost.setOwner(3);
    process.stdout.write('owned\\n');
    process.stdin.on('data', () => {}); process.stdin.on('end', () => process.exit(0));`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit', fd] });
  return new Promise((res, rej) => {
    child.stdout!.on('data', (b) => { if (String(b).includes('owned')) res(child); });
    child.on('exit', (c) => rej(new Error(`owner process exited ${c}`)));
  });
}

describeWith(['fuse', 'root'], 'fuzz: vhost-vdpa device requests', () => {
  let d: VdpaDaemon;
  let logFile: string;
  beforeAll(async () => {
    const dir = tempDir('vdpa-fuzz2-');
    logFile = join(dir, 'daemon.log');
    d = await startDaemon({
      dir: join(dir, 'mnt'), logFile, memlockLimit: 256n << 20n,
      devices: [{ name: 'va', type: 'net', dma: 'va' }, { name: 'pa', type: 'net', dma: 'pa' }],
    });
  });
  afterAll(async () => { await d?.stop(); });

  for (const dma of ['va', 'pa'] as const) {
    it(`${dma}: random ioctls and IOTLB messages from no owner, a non-owner and the owner; the device works afterwards`, async () => {
      const seed = fuzzSeed(dma === 'va' ? 0xdef1 : 0xdef2);
      const r = rng(seed);
      const fd = open(d.pathOf(dma), O_RDWR);
      const mem = new DriverMemory(4 << 20);
      const efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), notEventfd = memfdCreate('fuzz-not-an-eventfd', 1);
      const safeFds = [-1, -1, -2, -1000, 0x7fffffff, 99_999, efd, notEventfd];
      const ctx = { uaddr: BigInt(mem.addr), iova: BigInt(mem.iovaBase), size: BigInt(mem.size) };
      // Phase 1 must not make us the owner, phase 2 must not take the device from the other process.
      let exclude = new Set<number>([VHOST.SET_OWNER, VHOST.NEW_OWNER]);
      const bad: string[] = [];
      const counts: Record<string, number> = {};
      const per = fuzzCases(4000);
      let qs: ReturnType<typeof bringUp> = [];
      let owner: ChildProcess | null = null;
      const logBefore = existsSync(logFile) ? readFileSync(logFile, 'utf8').length : 0;
      const t0 = Date.now();
      let cases = 0;
      const one = (phase: string, rr: Rng) => {
        cases++;
        const k = rr.int(10);
        const run = (what: string, f: () => unknown) => {
          const got = errnoOf(f);
          counts[got] = (counts[got] ?? 0) + 1;
          if (got !== 'OK' && !ALLOWED_ERRNOS.has(got) && bad.length < 20) bad.push(`${phase}: ${what}: ${got} [seed ${seed}]`);
        };
        if (k < 3) { const c = knownIoctl(rr, safeFds, exclude); run(`${c.what} ${c.arg.subarray(0, 16).toString('hex')}`, () => ioctlBuf('x', fd, c.cmd, c.arg)); }
        else if (k < 5) { const c = randomIoctl(rr, safeFds, exclude); run(`${c.what} ${c.arg.subarray(0, 16).toString('hex')}`, () => ioctlBuf('x', fd, c.cmd, c.arg)); }
        else if (k < 9) { const m = iotlbMessage(rr, ctx); run(m.what, () => write('w', fd, m.data)); }
        else for (const m of batchSequence(rr, ctx)) run(`batch: ${m.what}`, () => write('w', fd, m.data));
      };
      const responsive = (phase: string) => {
        const st = d.status().devices.find((x) => x.name === dma)!;
        expect(st.open, `${phase}: device still open`).toBe(true);
        expect(errnoOf(() => vhost.getStatus(fd)), `${phase}: GET_STATUS`).toBe('OK');
      };
      try {
        // 1. nobody owns the device
        for (let i = 0; i < per; i++) one('no owner', r);
        responsive('no owner');
        // 2. another process owns it: we are a non-owner holding the same file
        vhost.setStatus(fd, 0);
        owner = await foreignOwner(fd);
        exclude = new Set<number>([VHOST.NEW_OWNER]);
        expect(errnoOf(() => vhost.setOwner(fd))).toBe('EBUSY');
        for (let i = 0; i < per; i++) one('non-owner', r);
        responsive('non-owner');
        // 3. we take it over (NEW_OWNER) and own it
        expect(errnoOf(() => vhost.newOwner(fd))).toBe('OK');
        owner.stdin!.end();
        await new Promise((res) => owner!.on('exit', res));
        owner = null;
        exclude = new Set<number>();
        vhost.setBackendFeatures(fd, r.pick([0x6n, 0xen, 0x6n | (1n << 10n), 0x3en]));
        mem.update(fd);
        for (let i = 0; i < 2 * per; i++) one('owner', r);
        responsive('owner');
        const total = Object.values(counts).reduce((a, b) => a + b, 0);
        console.log(`vdpa fuzz (${dma}): ${cases} cases, ${total} requests in ${Date.now() - t0} ms, seed ${seed}, results ${JSON.stringify(counts)}`);
        expect(bad, `seed ${seed}`).toEqual([]);
        expect(cases).toBe(4 * per);
        expect(total).toBeGreaterThanOrEqual(cases);

        // Afterwards: a reset, an empty IOTLB, the usual bring-up, DRIVER_OK and frames looped back.
        vhost.setStatus(fd, 0);
        expect(vhost.getStatus(fd)).toBe(0);
        vhost.iotlb(fd, { type: IOTLB.INVALIDATE, iova: 0n, size: 0n, uaddr: 0n, perm: 0 }); // size 0 = everything (last = 2^64-1)
        qs = bringUp(fd, mem, 3, { owner: false });
        expect(vhost.getStatus(fd)).toBe(0x0f);
        expect(loopback(qs, mem, 8)).toBe(true);
      } finally {
        owner?.kill('SIGKILL');
        closeQueues(qs); close(efd); close(notEventfd); close(fd); mem.free();
      }
      const log = existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(logBefore) : '';
      const internal = log.split('\n').filter((l) => /failed: \w*Error|\n\s+at /.test(l) || /TypeError|RangeError|ReferenceError/.test(l));
      expect(internal.slice(0, 5), `daemon log: internal exceptions (seed ${seed})`).toEqual([]);
    }, 120_000);
  }
});
