// The conformance checklist of docs/vhost-vdpa-live-update.md §7, one function per case: `id` is
// the item's number there (a new case takes the next free number and gets its item, §7.10).
// Every case starts with the device closed and leaves it closed (Ctx.dispose closes every role).
// Expectations are errno names as userspace sees them; "ok" for a write() means it returned 72.
import { BACKEND_F, IOTLB, IOTLB_PERM, VHOST, VIRTIO_F, VIRTIO_STATUS as S } from '../../src/vhost.js';
import type { Op } from './agent.js';
import { Case, Ctx, Fail } from './harness.js';
import type { DeviceInfo } from './probe.js';
import type { ChildPeer, Peer } from './peers.js';
import { RING_MEM, SCRATCH, wantedFeatures, type Seg } from './virtq.js';
import { VIRTIO_NET_F, netHdrSize } from '../../devices/vdpa/net.js';
import { VIRTIO_BLK_OUTHDR, VIRTIO_BLK_T } from '../../devices/vdpa/blk.js';

const PAGE = 4096, MiB = 1 << 20;
const V = (name: string, ...a: unknown[]): Op => ['v', name, ...a];
interface MsgOpts { off?: number; asid?: number; perm?: number; framing?: 1 | 2 }
const msg = (type: number, iova: bigint, size: number | bigint, o: MsgOpts & { mem?: string; uaddr?: bigint } = {}): Op =>
  ['iotlb', { type, iova, size: BigInt(size), perm: o.perm ?? 0, asid: o.asid, framing: o.framing, uaddr: o.uaddr ?? (o.mem ? { mem: o.mem, off: o.off ?? 0 } : 0n) }];
const UPD = (iova: bigint, size: number | bigint, mem: string, o: MsgOpts = {}): Op => msg(IOTLB.UPDATE, iova, size, { perm: 3, ...o, mem });
const INV = (iova: bigint, size: number | bigint, o: MsgOpts = {}): Op => msg(IOTLB.INVALIDATE, iova, size, o);
const BB = (asid = 0): Op => msg(IOTLB.BATCH_BEGIN, 0n, 0, { asid });
const BE = (asid = 0): Op => msg(IOTLB.BATCH_END, 0n, 0, { asid });
const REMAP = (iova: bigint, size: number | bigint, mem: string | bigint, o: MsgOpts = {}): Op =>
  msg(IOTLB.REMAP, iova, size, { ...o, ...(typeof mem === 'bigint' ? { uaddr: mem } : { mem }) });

const F = BACKEND_F;
const has = (d: DeviceInfo, bit: bigint) => (d.backend & bit) !== 0n;
/** What the suite negotiates by default: MSG_V2, BATCH, ASID, SUSPEND, RESUME as offered. */
const feats = (d: DeviceInfo) => d.backend & 0x3en;
const X = (c: Ctx, k = 0) => c.dev.base + BigInt(k) * 0x1000000n; // entry slots 16 MiB apart
const ringIova = (c: Ctx) => X(c, 0);
const vnum = (d: DeviceInfo) => Math.min(256, d.vringMax);
const needKind = (d: DeviceInfo) => (d.kind ? null : `device id ${d.id} is neither net nor blk: no traffic helper`);
const needPins = (d: DeviceInfo) => (d.pins.kind !== 'none' ? null : 'pinned pages not observable (no VmPin, no daemon status)');
const needNas2 = (d: DeviceInfo) => (d.nas >= 2 ? null : `needs nas >= 2 (device has ${d.nas})`);
const all = (...f: ((d: DeviceInfo) => string | null)[]) => (d: DeviceInfo) => f.map((g) => g(d)).find((r) => r) ?? null;

async function own(c: Ctx, p: Peer, bf: bigint = feats(c.dev)): Promise<void> {
  await c.ok(p, V('setOwner'));
  await c.ok(p, V('setBackendFeatures', bf));
}
/** An entry of `size` bytes of a fresh memfd `mem` at iova. */
async function entry(c: Ctx, p: Peer, mem: string, iova: bigint, size: number): Promise<void> {
  await c.ok(p, 'memfd', mem, size);
  await c.ok(p, UPD(iova, size, mem));
}
/** Owner, ring memfd entered at the ring IOVA, eventfds, status walk to 0x0f with fresh rings. */
async function bringUp(c: Ctx, p: Peer, bf?: bigint): Promise<void> {
  await own(c, p, bf);
  await entry(c, p, 'ring', ringIova(c), RING_MEM);
  await c.ok(p, 'eventfds');
  await c.ok(p, 'ringAt', ringIova(c));
  await c.ok(p, 'up', [], true);
}
async function flows(c: Ctx, p: Peer, from: number, count = 1, when = ''): Promise<void> {
  const err = await c.ok(p, 'traffic', from, count);
  if (err) throw new Fail(`${p.role} traffic${when}: ${err}`);
}
const eq = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
/** Used-ring (and vring base) advance per traffic round trip: a frame on each net queue, a write + read on blk. */
const perTrip = (c: Ctx) => (c.dev.kind === 'blk' ? 2 : 1);
const advanced = (c: Ctx, xs: number[], trips: number) => xs.map((x) => (x + trips * perTrip(c)) & 0xffff);
/** A child role that opens the node itself (a process that can exec). */
async function opener(c: Ctx, role = 'A'): Promise<ChildPeer> {
  const x = await c.child(role);
  await c.ok(x, 'openSettled');
  return x;
}
/** execve of the suite with the fd kept; the peer then speaks for A'. */
async function execPeer(c: Ctx, x: ChildPeer, opts: { keepDev?: boolean } = {}): Promise<void> {
  const v = await c.ok(x, 'exec', opts);
  c.check(v?.execd === true, `exec did not reach the new image (${JSON.stringify(v)})`);
  x.role = "A'";
}
/** Pinned KiB of a role (PA figures). */
const pins = async (c: Ctx, p: Peer): Promise<number> => {
  const v = await c.ok(p, 'pins');
  c.check(typeof v === 'number', `${p.role}: pinned pages not readable`);
  return v as number;
};
/** Wait (asynchronous FUSE release) until pins(p) equals want; returns the last value. */
async function pinsSettle(c: Ctx, p: Peer, want: number): Promise<number> {
  let v = await pins(c, p);
  for (let i = 0; i < 100 && v !== want; i++) { await c.ok(p, 'sleep', 20); v = await pins(c, p); }
  return v;
}

/**
 * §7.8 set-up: A makes entry E (the ring memfd at I), sets up the rings, passes traffic, suspends
 * (when offered), saves the vring bases, optionally resets (reset-style), and execs with the fd kept.
 */
async function liveSetup(c: Ctx, o: { reset?: boolean; suspend?: boolean } = {}) {
  const x = await opener(c);
  await bringUp(c, x);
  await flows(c, x, 0, 2, ' before exec');
  await c.ok(x, 'fill', 'ring', 0xf0000, 'c0ffee00deadbeef');
  const used = await c.ok(x, 'usedIdx');
  const suspended = o.suspend !== false && has(c.dev, F.SUSPEND);
  if (suspended) await c.ok(x, V('suspend'));
  const bases = await c.ok(x, 'bases') as number[];
  if (o.reset) await c.ok(x, V('setStatus', 0));
  await execPeer(c, x);
  return { x, bases, used: used as number[], suspended, I: ringIova(c), S: RING_MEM };
}
/** After exec: NEW_OWNER and the ring memfd mapped again at V'. */
async function takeOver(c: Ctx, x: Peer): Promise<number> {
  await c.ok(x, V('newOwner'));
  return c.ok(x, 'map', 'ring');
}
/** Reset-style restart from saved bases (new eventfds), or resume-style (re-pointed eventfds + RESUME). */
async function restart(c: Ctx, x: Peer, how: 'reset' | 'resume', bases: number[]): Promise<void> {
  await c.ok(x, 'eventfds');
  if (how === 'reset') await c.ok(x, 'up', bases);
  else { await c.ok(x, 'rewire'); await c.ok(x, V('resume')); }
}
const resumeOrReset = (c: Ctx): 'reset' | 'resume' => (has(c.dev, F.SUSPEND) && has(c.dev, F.RESUME) ? 'resume' : 'reset');


// ---- device-model cases (77-82): traffic laid out by the case in the scratch area of the ring memory ----
const BUF = 0x2000; // 8 KiB per buffer: RX at SCRATCH, TX after 8 RX buffers
const rxOff = (i: number) => SCRATCH + i * BUF, txOff = (i: number) => SCRATCH + (8 + i) * BUF;
const bytes = (v: unknown): Buffer => Buffer.from(v as string, 'hex');
const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
/** The net header's length for the device's features (as it negotiated them). */
const netHdr = (c: Ctx) => netHdrSize(c.dev.features);
/** A zeroed net header and an Ethernet frame to `dst` of `len` bytes, payload tagged by `tag`. */
function ethFrame(c: Ctx, dst: number[] | Buffer, len = 64, tag = 0): Buffer {
  const f = Buffer.alloc(netHdr(c) + len), h = netHdr(c);
  Buffer.from(dst).copy(f, h);
  Buffer.from([0x02, 0, 0, 0, 0, 0x01]).copy(f, h + 6);
  f.writeUInt16BE(0x88b5, h + 12);
  for (let i = h + 14; i < f.length; i++) f[i] = (tag * 37 + i) & 0xff;
  return f;
}
/** The device's MAC (config bytes 0..5) when it offers VIRTIO_NET_F_MAC, else zeros. */
async function macOf(c: Ctx, p: Peer): Promise<Buffer> {
  if (!(c.dev.features & VIRTIO_NET_F.MAC)) return Buffer.alloc(6);
  const v = await c.ok(p, V('getConfig', 0, 6));
  return Buffer.from((v as { data?: number[] }).data ?? (v as Buffer));
}
/** Lay out buffers and post them as one-buffer chains on queue q, without a kick; returns the heads. */
async function postBufs(c: Ctx, p: Peer, q: number, bufs: { off: number; data?: Buffer; len?: number; write: boolean }[]): Promise<number[]> {
  for (const b of bufs) if (b.data) await c.ok(p, 'fill', 'ring', b.off, b.data.toString('hex'));
  return c.ok(p, 'post', q, bufs.map((b) => [{ off: b.off, len: b.len ?? b.data!.length, write: b.write }]));
}
async function waitUsedOr(c: Ctx, p: Peer, q: number, target: number, what: string): Promise<void> {
  if (!(await c.ok(p, 'waitUsed', q, target))) throw new Fail(`${what}: queue ${q} used index ${(await c.ok(p, 'usedIdx'))[q]}, want ${target & 0xffff}`);
}
/**
 * Sends `frames` and then a broadcast marker on TX with one kick, with an RX buffer for each frame
 * in `rx` (what RX should receive, in order) and one for the marker. Every TX chain must complete
 * with length 0; RX must hold exactly `rx` and the marker.
 */
async function netExchange(c: Ctx, p: Peer, frames: Buffer[], rx: Buffer[]): Promise<void> {
  const marker = ethFrame(c, BCAST, 60, 0xee);
  const [rx0, tx0] = await c.ok(p, 'usedIdx') as number[];
  const heads = await postBufs(c, p, RXQ, [...rx, marker].map((_, i) => ({ off: rxOff(i), len: BUF, write: true })));
  const all = [...frames, marker];
  await postBufs(c, p, TXQ, all.map((data, i) => ({ off: txOff(i), data, write: false })));
  await c.ok(p, 'kick', TXQ);
  await waitUsedOr(c, p, TXQ, tx0 + all.length, 'TX not completed');
  for (let i = 0; i < all.length; i++) {
    const e = await c.ok(p, 'usedElem', TXQ, tx0 + i);
    c.check(e.len === 0, `TX chain ${i} completed with length ${e.len}, want 0`);
  }
  const done = await c.ok(p, 'waitUsed', RXQ, rx0 + rx.length + 1);
  const got: Buffer[] = [];
  for (let i = rx0; i !== (await c.ok(p, 'usedIdx'))[RXQ]; i = (i + 1) & 0xffff) {
    const e = await c.ok(p, 'usedElem', RXQ, i);
    got.push(bytes(await c.ok(p, 'peek', 'ring', rxOff(heads.indexOf(e.id)), e.len)));
  }
  const name = (b: Buffer) => (b.equals(marker) ? 'the marker' : `a ${b.length}-byte frame to ${b.subarray(netHdr(c), netHdr(c) + 6).toString('hex')}`);
  const want = [...rx, marker];
  c.check(done && got.length === want.length && got.every((b, i) => b.equals(want[i])),
    `RX got [${got.map(name).join(', ')}], want [${want.map(name).join(', ')}]`);
}
const RXQ = 0, TXQ = 1;
/** One virtio-blk request laid out at `off`: header, data (out or in), status byte. */
function blkReq(type: number, sector: number, off: number, data: { out?: Buffer; inLen?: number }): { segs: Seg[]; fill: Buffer; statusOff: number; dataOff: number } {
  const H = VIRTIO_BLK_OUTHDR, hdr = Buffer.alloc(H.sizeof);
  hdr.writeUInt32LE(type, H.type); hdr.writeBigUInt64LE(BigInt(sector), H.sector);
  const dataOff = off + H.sizeof, dataLen = data.out?.length ?? data.inLen ?? 0, statusOff = dataOff + dataLen;
  const segs: Seg[] = [{ off, len: H.sizeof, write: false }];
  if (dataLen) segs.push({ off: dataOff, len: dataLen, write: !data.out });
  segs.push({ off: statusOff, len: 1, write: true });
  const fill = Buffer.concat([hdr, data.out ?? Buffer.alloc(dataLen), Buffer.from([0xff])]);
  return { segs, fill, statusOff, dataOff };
}
/** Posts blk requests (without a kick); returns them. */
async function postBlk(c: Ctx, p: Peer, reqs: ReturnType<typeof blkReq>[]): Promise<ReturnType<typeof blkReq>[]> {
  for (const r of reqs) await c.ok(p, 'fill', 'ring', r.segs[0].off, r.fill.toString('hex'));
  await c.ok(p, 'post', 0, reqs.map((r) => r.segs));
  return reqs;
}
const { IN: T_IN, OUT: T_OUT, FLUSH: T_FLUSH, GET_ID: T_GET_ID } = VIRTIO_BLK_T;
const needNet = (d: DeviceInfo) => (d.kind === 'net' ? null : `a net case (device id ${d.id})`);
const needBlk = (d: DeviceInfo) => (d.kind === 'blk' ? null : `a blk case (device id ${d.id})`);

export const cases: Case[] = [
  // ---- §7.2 open, ownership, dispatch ----
  { id: 1, title: 'second open EBUSY, open after close', tags: ['U'], run: async (c) => {
    const a = await c.a();
    const a2 = c.local('A2');
    await c.expect(a2, 'EBUSY', 'open');
    await c.ok(a, 'close');
    await c.ok(a2, 'openSettled');
  } },
  { id: 2, title: 'unowned fd: GET_* ioctls succeed', tags: ['U'], run: async (c) => {
    const a = await c.a();
    for (const g of ['getDeviceId', 'getStatus', 'getFeatures', 'getBackendFeatures', 'getVqsCount', 'getConfigSize', 'getIovaRange', 'getVringNum', 'getAsNum']) await c.ok(a, V(g));
    return '9 getters';
  } },
  { id: 3, title: 'unowned fd: owner-checked ioctls EPERM, UPDATE EFAULT', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.expect(a, 'EPERM', V('setVringNum', 0, vnum(c.dev)));
    await c.expect(a, 'EPERM', V('getVringBase', 0));
    await c.ok(a, 'memfd', 'm', PAGE);
    await c.expect(a, 'EFAULT', UPD(X(c), PAGE, 'm'));
  } },
  { id: 4, title: 'SET_OWNER, then again EBUSY', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.ok(a, V('setOwner'));
    await c.expect(a, 'EBUSY', V('setOwner'));
  } },
  { id: 5, title: 'thread of the owner may SET_VRING_NUM', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.ok(a, V('setOwner'));
    const t = await c.thread(a);
    await c.ok(t, V('setVringNum', 0, vnum(c.dev)));
  } },
  { id: 6, title: 'child B: SET_OWNER EBUSY, SET_VRING_NUM EPERM, UPDATE EFAULT, GET_STATUS ok', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    const b = await c.child('B', a);
    await c.expect(b, 'EBUSY', V('setOwner'));
    await c.expect(b, 'EPERM', V('setVringNum', 0, vnum(c.dev)));
    await c.ok(b, 'memfd', 'm', PAGE);
    await c.expect(b, 'EFAULT', UPD(X(c), PAGE, 'm'));
    await c.ok(b, V('getStatus'));
  } },
  { id: 7, title: "A' without NEW_OWNER: EPERM/EFAULT, GET_STATUS ok, SET_OWNER EBUSY", tags: ['U'], needs: needKind, run: async (c) => {
    const x = await opener(c);
    await bringUp(c, x);
    await execPeer(c, x);
    await c.expect(x, 'EPERM', V('getVringBase', 0));
    await c.expect(x, 'EPERM', V('setVringNum', 0, vnum(c.dev)));
    await c.ok(x, 'map', 'ring');
    await c.expect(x, 'EFAULT', UPD(X(c, 1), PAGE, 'ring'));
    await c.ok(x, V('getStatus'));
    await c.expect(x, 'EBUSY', V('setOwner'));
  } },
  { id: 8, title: 'RESET_OWNER: owner EFAULT, B EPERM, owner unchanged', tags: ['U'], run: async (c) => {
    const UNKNOWN = 0xaf30; // _IO(0xAF, 0x30), unused: the same fall-through path (§3.3 item 3)
    const a = await c.a();
    await c.ok(a, V('setOwner'));
    await c.expect(a, 'EFAULT', 'ioctl', VHOST.RESET_OWNER, 0);
    await c.expect(a, 'EFAULT', 'ioctl', UNKNOWN, 0);
    const b = await c.child('B', a);
    await c.expect(b, 'EPERM', 'ioctl', VHOST.RESET_OWNER, 0);
    await c.expect(b, 'EPERM', 'ioctl', UNKNOWN, 0);
    await c.ok(a, V('setVringNum', 0, vnum(c.dev)));
    return 'also unknown 0xaf30: owner EFAULT, B EPERM';
  } },
  { id: 9, title: "0xaf27 upstream: unowned EPERM, owner EFAULT, A' EPERM", tags: ['U0'], run: async (c) => {
    const x = await opener(c);
    await c.expect(x, 'EPERM', 'ioctl', VHOST.NEW_OWNER, 0);
    await c.ok(x, V('setOwner'));
    await c.expect(x, 'EFAULT', 'ioctl', VHOST.NEW_OWNER, 0);
    await execPeer(c, x);
    await c.expect(x, 'EPERM', 'ioctl', VHOST.NEW_OWNER, 0);
  } },
  { id: 10, title: 'SET_LOG_BASE, SET_LOG_FD ENOTTY', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.ok(a, V('setOwner'));
    await c.expect(a, 'ENOTTY', 'ioctl', VHOST.SET_LOG_BASE, 0, 8);
    await c.expect(a, 'ENOTTY', 'ioctl', VHOST.SET_LOG_FD, 0, 4);
  } },
  { id: 11, title: 'SET_VRING_NUM index = vqs count ENOBUFS', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.ok(a, V('setOwner'));
    await c.expect(a, 'ENOBUFS', V('setVringNum', c.dev.vqs, vnum(c.dev)));
    return `vqs ${c.dev.vqs}`;
  } },
  { id: 12, title: 'close empties the IOTLB; reopen status 0', tags: ['U'], needs: needKind, run: async (c) => {
    const a = await c.a();
    const base = c.dev.mode === 'pa' ? await pins(c, a) : 0;
    await bringUp(c, a);
    await entry(c, a, 'e', X(c, 1), PAGE);
    await c.ok(a, 'close');
    await c.ok(a, 'openSettled');
    const st = await c.ok(a, V('getStatus'));
    c.check(st === 0, `status after reopen 0x${st.toString(16)}, want 0`);
    await c.ok(a, V('setOwner'));
    if (c.dev.mode === 'pa') {
      const v = await pinsSettle(c, a, base);
      c.check(v === base, `VmPin ${v} KiB after close, baseline ${base}`);
    }
    await c.ok(a, UPD(X(c, 1), PAGE, 'e'));
    return c.dev.mode === 'pa' ? 'pins back to baseline' : undefined;
  } },
  { id: 13, title: 'fd inherited by B: reopen EBUSY until B closes', tags: ['U'], run: async (c) => {
    const a = await c.a();
    const b = await c.child('B', a);
    await c.ok(a, 'close');
    await c.expect(a, 'EBUSY', 'open');
    await c.ok(b, 'close');
    await c.ok(a, 'openSettled');
  } },

  // ---- §7.3 backend features ----
  { id: 14, title: 'backend features ⊇ 0xE', tags: ['U'], run: async (c) => {
    c.check((c.dev.backend & 0xen) === 0xen, `got 0x${c.dev.backend.toString(16)}`);
    return `got 0x${c.dev.backend.toString(16)}`;
  } },
  { id: 15, title: 'SET bit 0 or bit 11 EOPNOTSUPP', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.expect(a, 'EOPNOTSUPP', V('setBackendFeatures', 0xen | 0x1n));
    await c.expect(a, 'EOPNOTSUPP', V('setBackendFeatures', 0xen | 0x800n));
  } },
  { id: 16, title: 'upstream: SET offered|0x200, offered|0x400 EOPNOTSUPP', tags: ['U0'], run: async (c) => {
    const a = await c.a();
    await c.expect(a, 'EOPNOTSUPP', V('setBackendFeatures', c.dev.backend | 0x200n));
    await c.expect(a, 'EOPNOTSUPP', V('setBackendFeatures', c.dev.backend | 0x400n));
  } },
  { id: 17, title: 'patched parent without 9/10: SET 0xE|0x600 accepted', tags: ['P', 'SIM'],
    gate: (d) => (!d.series ? 'device lacks the series (upstream) [P]' : d.newOwner || d.remap ? 'needs a parent without bits 9/10 [SIM]' : null),
    run: async (c) => { const a = await c.a(); await c.ok(a, V('setBackendFeatures', 0xen | 0x600n)); } },
  { id: 18, title: 'SET of an op-less bit EOPNOTSUPP; DESC_ASID without IOTLB_ASID EINVAL', tags: ['U', 'SIM'], run: async (c) => {
    const a = await c.a();
    const done: string[] = [];
    for (const [name, bit] of [['SUSPEND', F.SUSPEND], ['RESUME', F.RESUME], ['IOTLB_PERSIST', F.IOTLB_PERSIST], ['DESC_ASID', F.DESC_ASID]] as const) {
      if (has(c.dev, bit)) continue;
      await c.expect(a, 'EOPNOTSUPP', V('setBackendFeatures', 0xen | bit));
      done.push(`${name} EOPNOTSUPP`);
    }
    if (has(c.dev, F.DESC_ASID)) { await c.expect(a, 'EINVAL', V('setBackendFeatures', 0x6n | F.DESC_ASID)); done.push('DESC_ASID w/o ASID EINVAL'); }
    return done.join(', ');
  } },
  { id: 19, title: 'SET ENABLE_AFTER_DRIVER_OK unadvertised accepted', tags: ['U'],
    needs: (d) => (has(d, F.ENABLE_AFTER_DRIVER_OK) ? 'device advertises bit 6' : null),
    run: async (c) => { const a = await c.a(); await c.ok(a, V('setBackendFeatures', 0xen | F.ENABLE_AFTER_DRIVER_OK)); } },
  { id: 20, title: 'SET 0xE unowned and from B', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.ok(a, V('setBackendFeatures', 0xen));
    await c.ok(a, V('setOwner'));
    const b = await c.child('B', a);
    await c.ok(b, V('setBackendFeatures', 0xen));
  } },
  { id: 21, title: 'asid field ignored without IOTLB_ASID; asid = nas EFAULT', tags: ['U'], needs: needNas2, run: async (c) => {
    const a = await c.a();
    await own(c, a, 0x6n);
    await c.ok(a, 'memfd', 'm', PAGE);
    await c.ok(a, UPD(X(c), PAGE, 'm', { asid: 1 }));
    await c.expect(a, 'EFAULT', UPD(X(c), PAGE, 'm', { asid: 0 }));
    await c.ok(a, 'close');
    await c.ok(a, 'openSettled');
    await own(c, a, 0xen);
    await c.expect(a, 'EFAULT', UPD(X(c), PAGE, 'm', { asid: c.dev.nas }));
  } },

  // ---- §7.4 status, virtio features, suspend ----
  { id: 22, title: 'status walk 0 → 0x0f, GET_STATUS at each step', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.ok(a, V('setOwner'));
    const step = async (s: number) => { await c.ok(a, V('setStatus', s)); const g = await c.ok(a, V('getStatus')); c.check(g === s, `GET_STATUS 0x${g.toString(16)} after SET 0x${s.toString(16)}`); };
    c.check(await c.ok(a, V('getStatus')) === 0, 'status not 0 after open');
    await step(S.ACKNOWLEDGE);
    await step(S.ACKNOWLEDGE | S.DRIVER);
    await c.ok(a, V('setFeatures', c.dev.kind ? wantedFeatures(c.dev.kind, c.dev.features) : c.dev.features & VIRTIO_F.VERSION_1));
    await step(0x0b);
    await step(0x0f);
  } },
  { id: 23, title: 'SET_STATUS clearing a bit EINVAL', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.ok(a, V('setStatus', 1)); await c.ok(a, V('setStatus', 3));
    await c.expect(a, 'EINVAL', V('setStatus', 1));
    const g = await c.ok(a, V('getStatus'));
    c.check(g === 3, `status 0x${g.toString(16)}, want 0x03`);
  } },
  { id: 24, title: 'SET_FEATURES after FEATURES_OK EBUSY; after reset ok', tags: ['U'], run: async (c) => {
    const a = await c.a();
    const f = c.dev.kind ? wantedFeatures(c.dev.kind, c.dev.features) : c.dev.features & VIRTIO_F.VERSION_1;
    await c.ok(a, V('setStatus', 1)); await c.ok(a, V('setStatus', 3));
    await c.ok(a, V('setFeatures', f));
    await c.ok(a, V('setStatus', 0x0b));
    await c.expect(a, 'EBUSY', V('setFeatures', f));
    await c.ok(a, V('setStatus', 0));
    await c.ok(a, V('setFeatures', f));
  } },
  { id: 25, title: 'SET_STATUS 0 keeps the IOTLB', tags: ['U'], needs: needKind, run: async (c) => {
    const a = await c.a();
    await bringUp(c, a);
    await entry(c, a, 'e', X(c, 1), PAGE);
    const p0 = c.dev.mode === 'pa' ? await pins(c, a) : 0;
    await c.ok(a, V('setStatus', 0));
    c.check(await c.ok(a, V('getStatus')) === 0, 'status not 0');
    await c.expect(a, 'EFAULT', UPD(X(c, 1), PAGE, 'e'));
    if (c.dev.mode === 'pa') { const p1 = await pins(c, a); c.check(p1 === p0, `VmPin ${p0} -> ${p1} KiB`); }
  } },
  { id: 26, title: 'SUSPEND/RESUME without DRIVER_OK return 0', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await c.ok(a, V('suspend')); await c.ok(a, V('resume'));
    await c.ok(a, V('setStatus', 1)); await c.ok(a, V('setStatus', 3));
    await c.ok(a, V('suspend')); await c.ok(a, V('resume'));
  } },
  { id: 27, title: 'running, parent lacking suspend/resume: EOPNOTSUPP', tags: ['U', 'SIM'],
    needs: all(needKind, (d) => (has(d, F.SUSPEND) && has(d, F.RESUME) ? 'needs a parent without suspend or resume [SIM]' : null)),
    run: async (c) => {
      const a = await c.a();
      await bringUp(c, a);
      if (!has(c.dev, F.SUSPEND)) await c.expect(a, 'EOPNOTSUPP', V('suspend'));
      if (!has(c.dev, F.RESUME)) await c.expect(a, 'EOPNOTSUPP', V('resume'));
    } },
  { id: 28, title: 'suspended device processes nothing; after RESUME the request completes', tags: ['U'],
    needs: all(needKind, (d) => (has(d, F.SUSPEND) && has(d, F.RESUME) ? null : 'needs SUSPEND and RESUME offered')),
    run: async (c) => {
      const a = await c.a();
      await bringUp(c, a);
      await flows(c, a, 0, 1, ' before suspend');
      await c.ok(a, V('suspend'));
      const used = await c.ok(a, 'usedIdx');
      const p = await c.ok(a, 'send', 1);
      await c.ok(a, 'sleep', 150);
      const after = await c.ok(a, 'usedIdx');
      c.check(eq(used, after), `used index moved while suspended: ${used} -> ${after}`);
      await c.ok(a, V('getVringBase', 0));
      await c.ok(a, V('resume'));
      const err = await c.ok(a, 'complete', p);
      c.check(err === null, `after RESUME: ${err}`);
    } },
  { id: 29, title: 'B: GET_STATUS, GET_CONFIG, SUSPEND, RESUME succeed', tags: ['U'], run: async (c) => {
    const a = await c.a();
    const running = c.dev.kind !== null && has(c.dev, F.SUSPEND) && has(c.dev, F.RESUME);
    if (running) await bringUp(c, a); else await c.ok(a, V('setOwner'));
    const b = await c.child('B', a);
    await c.ok(b, V('getStatus'));
    await c.ok(b, V('getConfig', 0, Math.min(8, c.dev.configSize)));
    await c.ok(b, V('suspend'));
    await c.ok(b, V('resume'));
    return running ? 'device running' : 'device not running';
  } },

  // ---- §7.5 IOTLB messages ----
  { id: 30, title: 'writes of 4 and 39 bytes EINVAL', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.expect(a, 'EINVAL', 'writeRaw', '02000000');
    const b = Buffer.alloc(39); b.writeUInt32LE(2, 0); b[33] = IOTLB.UPDATE;
    await c.expect(a, 'EINVAL', 'writeRaw', b.toString('hex'));
  } },
  { id: 31, title: 'framing type 0 or 3 EINVAL', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.ok(a, 'memfd', 'm', PAGE);
    for (const t of [0, 3]) await c.expect(a, 'EINVAL', ...UPD(X(c), PAGE, 'm', { framing: t as 1 }));
  } },
  { id: 32, title: 'UPDATE size 0 EINVAL', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.ok(a, 'memfd', 'm', PAGE);
    await c.expect(a, 'EINVAL', UPD(X(c), 0, 'm'));
  } },
  { id: 33, title: 'UPDATE with V2 and with V1 framing', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.ok(a, 'memfd', 'm', 2 * PAGE);
    await c.ok(a, UPD(X(c), PAGE, 'm'));
    await c.ok(a, UPD(X(c, 1), PAGE, 'm', { framing: 1, off: PAGE }));
  } },
  { id: 34, title: 'UPDATE outside the IOVA range or overflowing EFAULT', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.ok(a, 'memfd', 'm', 2 * PAGE);
    const { first, last } = c.dev.iova, done = ['overflow'];
    if (first >= BigInt(PAGE)) { await c.expect(a, 'EFAULT', UPD(first - BigInt(PAGE), PAGE, 'm')); done.push('below first'); }
    if (last < 2n ** 64n - 1n) { await c.expect(a, 'EFAULT', UPD(last - BigInt(PAGE) + 1n, 2 * PAGE, 'm')); done.push('above last'); }
    await c.expect(a, 'EFAULT', UPD(2n ** 64n - BigInt(PAGE), 2 * PAGE, 'm'));
    return done.join(', ');
  } },
  { id: 35, title: 'UPDATE partly overlapping an entry EFAULT', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.ok(a, 'memfd', 'm', 4 * PAGE);
    await c.ok(a, UPD(X(c), 2 * PAGE, 'm'));
    await c.expect(a, 'EFAULT', UPD(X(c) + BigInt(PAGE), 2 * PAGE, 'm', { off: PAGE }));
  } },
  { id: 36, title: 'no AS yet: INVALIDATE, BATCH_END EFAULT; then INVALIDATE of a free range ok', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.expect(a, 'EFAULT', INV(X(c), PAGE));
    await c.expect(a, 'EFAULT', BE(0));
    await entry(c, a, 'm', X(c), PAGE);
    await c.ok(a, INV(X(c, 1), PAGE));
  } },
  { id: 37, title: 'batch of asid 0: UPDATE asid 1 EFAULT, BATCH_END ok', tags: ['U'], needs: needNas2, run: async (c) => {
    const a = await c.a();
    await own(c, a, feats(c.dev) | F.IOTLB_ASID);
    await c.ok(a, 'memfd', 'm', PAGE);
    await c.ok(a, BB(0));
    await c.expect(a, 'EFAULT', UPD(X(c), PAGE, 'm', { asid: 1 }));
    await c.ok(a, BE(0));
  } },
  { id: 38, title: 'INVALIDATE removes the whole entry', tags: ['U'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await entry(c, a, 'e1', X(c), 2 * MiB);
    await entry(c, a, 'e2', X(c, 1), PAGE);
    const p0 = c.dev.mode === 'pa' ? await pins(c, a) : 0;
    await c.ok(a, INV(X(c) + BigInt(PAGE), PAGE));
    if (c.dev.mode !== 'pa') {
      await c.ok(a, UPD(X(c), 2 * MiB, 'e1'));
      await c.expect(a, 'EFAULT', UPD(X(c, 1), PAGE, 'e2'));
      return;
    }
    // PA: one UPDATE makes one entry per physically contiguous run (§3.8), so E1 is one entry only
    // if its pages happen to be contiguous. Observed on 6.12 vdpa_sim use_va=0: INVALIDATE of one
    // page removed only the run(s) holding it and the re-UPDATE of E1 overlapped the rest.
    const fell = p0 - (await pins(c, a));
    await c.expect(a, 'EFAULT', UPD(X(c, 1), PAGE, 'e2'));
    if (fell === 2048) { await c.ok(a, UPD(X(c), 2 * MiB, 'e1')); return 'E1 was one entry: VmPin fell by all of it'; }
    c.check(fell > 0 && fell < 2048 && fell % 4 === 0, `VmPin fell by ${fell} KiB after INVALIDATE of one page of a 2 MiB entry`);
    await c.expect(a, 'EFAULT', UPD(X(c), 2 * MiB, 'e1'));
    return `E1 was several physically contiguous runs: INVALIDATE removed the run(s) of ${fell} KiB, the rest still overlaps`;
  } },
  { id: 39, title: 'UPDATE of anonymous memory ok (nothing entered), again ok', tags: ['U', 'VA'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.ok(a, 'anon', 'anon', PAGE);
    await c.ok(a, UPD(X(c), PAGE, 'anon'));
    await c.ok(a, UPD(X(c), PAGE, 'anon'));
  } },
  { id: 40, title: 'UPDATE of a shared memfd: entered, no pins', tags: ['U', 'VA'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    const p0 = c.dev.pins.kind !== 'none' ? await pins(c, a) : null;
    await entry(c, a, 'm', X(c), 16 * PAGE);
    if (p0 !== null) { const p1 = await pins(c, a); c.check(p1 === p0, `VmPin ${p0} -> ${p1} KiB`); }
    await c.expect(a, 'EFAULT', UPD(X(c) + BigInt(8 * PAGE), 16 * PAGE, 'm'));
  } },

  // ---- §7.6 pinned memory (PA) ----
  { id: 41, title: 'RLIMIT_MEMLOCK L: UPDATE N ≤ L pins N pages; INVALIDATE unpins', tags: ['U', 'PA'], needs: needPins, run: async (c) => {
    const b = await opener(c, 'B');
    await own(c, b);
    await c.ok(b, 'memlock', BigInt(16 * PAGE));
    const p0 = await pins(c, b);
    await entry(c, b, 'm', X(c), 8 * PAGE);
    const p1 = await pins(c, b);
    c.check(p1 - p0 === 32, `VmPin +${p1 - p0} KiB, want +32`);
    await c.ok(b, INV(X(c), 8 * PAGE));
    const p2 = await pins(c, b);
    c.check(p2 === p0, `VmPin ${p2} KiB after INVALIDATE, want ${p0}`);
  } },
  { id: 42, title: 'N + pinned > L: EFAULT, nothing entered; ok after raising L', tags: ['U', 'PA'], needs: needPins, run: async (c) => {
    const b = await opener(c, 'B');
    await own(c, b);
    await c.ok(b, 'memlock', BigInt(8 * PAGE));
    await entry(c, b, 'm1', X(c), 4 * PAGE);
    const p0 = await pins(c, b);
    await c.ok(b, 'memfd', 'm2', 8 * PAGE);
    await c.expect(b, 'EFAULT', UPD(X(c, 1), 8 * PAGE, 'm2'));
    c.check(await pins(c, b) === p0, 'VmPin changed by a refused UPDATE');
    await c.ok(b, 'memlock', BigInt(16 * PAGE));
    await c.ok(b, UPD(X(c, 1), 8 * PAGE, 'm2'));
    return process.getuid?.() === 0 ? 'as root' : undefined;
  } },
  { id: 43, title: 'RLIMIT_MEMLOCK 0: UPDATE of 64 MiB memfd ok', tags: ['U', 'VA'], run: async (c) => {
    const b = await opener(c, 'B');
    await own(c, b);
    await c.ok(b, 'memlock', 0n);
    await entry(c, b, 'm', X(c), 64 * MiB);
  } },

  // ---- §7.7 VHOST_NEW_OWNER ----
  { id: 44, title: 'parent without bit 9 (bit negotiated anyway): NEW_OWNER EOPNOTSUPP', tags: ['P', 'SIM'],
    gate: (d) => (!d.series ? 'device lacks the series (upstream) [P]' : d.newOwner ? 'needs a parent without bit 9 [SIM]' : null),
    run: async (c) => {
      const a = await c.a();
      await c.expect(a, 'EOPNOTSUPP', V('newOwner'));
      await c.ok(a, 'close');
      const x = await opener(c);
      await own(c, x, feats(c.dev) | F.NEW_OWNER);
      await execPeer(c, x);
      await c.expect(x, 'EOPNOTSUPP', V('newOwner'));
    } },
  { id: 45, title: 'NEW_OWNER on an unowned fd EINVAL', tags: ['P'], run: async (c) => {
    const a = await c.a();
    await c.expect(a, 'EINVAL', V('newOwner'));
  } },
  { id: 46, title: 'NEW_OWNER by the owner EBUSY', tags: ['P', 'Q'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.expect(a, 'EBUSY', V('newOwner'));
    if (c.dev.mode !== 'pa' || c.dev.pins.kind === 'none') return 'PA limit variant not applicable';
    // [PA] device pins P, owner's L with P <= L < 2P: EBUSY by default, ENOMEM with Q2 or on a patched kernel
    await c.ok(a, 'close');
    const x = await opener(c, 'A2');
    await own(c, x);
    await entry(c, x, 'm', X(c), 64 * PAGE);
    await c.ok(x, 'memlock', BigInt(96 * PAGE));
    const r = await c.outcome(x, V('newOwner'));
    c.check(r === 'EBUSY' || r === 'ENOMEM', `owner NEW_OWNER with P <= L < 2P: expected EBUSY (default) or ENOMEM (Q2), got ${r}`);
    await c.ok(x, V('getVringBase', 0));
    return `P <= L < 2P: ${r}${r === 'ENOMEM' ? ' (Q2 behaviour: rlimit test before same-owner test)' : ' (default)'}`;
  } },
  { id: 47, title: "A': EPERM before NEW_OWNER, NEW_OWNER 0, then owner; second EBUSY", tags: ['P'], needs: needKind, run: async (c) => {
    const x = await opener(c);
    await bringUp(c, x);
    await execPeer(c, x);
    await c.expect(x, 'EPERM', V('getVringBase', 0));
    await c.expect(x, 'EPERM', V('setVringNum', 0, vnum(c.dev)));
    await c.ok(x, 'memfd', 'n', PAGE);
    await c.expect(x, 'EFAULT', UPD(X(c, 1), PAGE, 'n'));
    await c.ok(x, V('newOwner'));
    await c.ok(x, V('getVringBase', 0));
    await c.ok(x, UPD(X(c, 1), PAGE, 'n'));
    await c.expect(x, 'EBUSY', V('newOwner'));
  } },
  { id: 48, title: 'B takes ownership, A loses it, A takes it back', tags: ['P'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.ok(a, 'memfd', 'm', PAGE);
    const b = await c.child('B', a);
    await c.ok(b, V('newOwner'));
    await c.expect(a, 'EPERM', V('setVringNum', 0, vnum(c.dev)));
    await c.expect(a, 'EFAULT', UPD(X(c), PAGE, 'm'));
    await c.ok(a, V('getStatus'));
    await c.ok(a, V('newOwner'));
    await c.ok(a, V('setVringNum', 0, vnum(c.dev)));
    await c.expect(b, 'EPERM', V('setVringNum', 0, vnum(c.dev)));
  } },
  { id: 49, title: 'state survives exec + NEW_OWNER', tags: ['P'], needs: needKind, run: async (c) => {
    const x = await opener(c);
    await bringUp(c, x);
    await flows(c, x, 0, 2);
    await c.ok(x, 'fill', 'ring', 0xf0000, 'a5a5a5a55a5a5a5a');
    const st = await c.ok(x, V('getStatus'));
    const bases = await c.ok(x, 'bases');
    await execPeer(c, x);
    await c.ok(x, V('newOwner'));
    const st2 = await c.ok(x, V('getStatus'));
    c.check(st2 === st, `status 0x${st2.toString(16)}, was 0x${st.toString(16)}`);
    const b2 = await c.ok(x, 'bases');
    c.check(eq(b2, bases), `vring bases ${b2}, were ${bases}`);
    await c.ok(x, 'map', 'ring');
    await c.expect(x, 'EFAULT', UPD(ringIova(c), RING_MEM, 'ring'));
    const bytes = await c.ok(x, 'peek', 'ring', 0xf0000, 8);
    c.check(bytes === 'a5a5a5a55a5a5a5a', `memfd bytes ${bytes}`);
    return `status 0x${st.toString(16)}, bases ${bases}`;
  } },
  { id: 50, title: 'pinned accounting moves with NEW_OWNER', tags: ['P', 'PA'], needs: needPins, run: async (c) => {
    const a = await c.a();
    await own(c, a);
    const a0 = await pins(c, a);
    await entry(c, a, 'm', X(c), 64 * PAGE);
    const P = (await pins(c, a)) - a0;
    c.check(P === 256, `device pins ${P} KiB after a 64-page UPDATE, want 256`);
    const b = await c.child('B', a);
    const b0 = await pins(c, b), a1 = await pins(c, a);
    await c.ok(b, V('newOwner'));
    const a2 = await pins(c, a), b1 = await pins(c, b);
    c.check(a1 - a2 === P && b1 - b0 === P, `after B's NEW_OWNER: A ${a1}->${a2}, B ${b0}->${b1} KiB (P ${P})`);
    await b.dispose(); await a.dispose();
    const x = await opener(c);
    await own(c, x);
    await entry(c, x, 'm', X(c), 64 * PAGE);
    await execPeer(c, x);
    await c.ok(x, V('newOwner'));
    const x1 = await pins(c, x);
    c.check(x1 === P, `VmPin(A') ${x1} KiB, want ${P}`);
    return `P = ${P} KiB`;
  } },
  { id: 51, title: "B's limit too low: NEW_OWNER ENOMEM, nothing changes", tags: ['P', 'PA'], needs: needPins, run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await entry(c, a, 'm', X(c), 64 * PAGE);
    const b = await c.child('B', a);
    await c.ok(b, 'memlock', BigInt(32 * PAGE));
    const a0 = await pins(c, a), b0 = await pins(c, b);
    await c.expect(b, 'ENOMEM', V('newOwner'));
    await c.ok(a, V('getVringBase', 0));
    const a1 = await pins(c, a), b1 = await pins(c, b);
    c.check(a0 === a1 && b0 === b1, `VmPin changed: A ${a0}->${a1}, B ${b0}->${b1}`);
  } },
  { id: 52, title: "VA: A' with RLIMIT_MEMLOCK 0: NEW_OWNER 0, no pins", tags: ['P', 'VA'], needs: needKind, run: async (c) => {
    const x = await opener(c);
    await bringUp(c, x);
    await c.ok(x, 'memlock', 0n);
    const p0 = c.dev.pins.kind !== 'none' ? await pins(c, x) : null;
    await execPeer(c, x);
    await c.ok(x, V('newOwner'));
    if (p0 !== null) { const p1 = await pins(c, x); c.check(p1 === p0, `VmPin ${p0} -> ${p1} KiB`); }
  } },
  { id: 53, title: 'running device: B NEW_OWNER 0', tags: ['P'], needs: needKind, run: async (c) => {
    const a = await c.a();
    await bringUp(c, a);
    const b = await c.child('B', a);
    await c.ok(b, V('newOwner'));
  } },
  { id: 54, title: "A' never sets backend features: NEW_OWNER 0", tags: ['P'], run: async (c) => {
    const x = await opener(c);
    await c.ok(x, V('setOwner'));
    await execPeer(c, x);
    await c.ok(x, V('newOwner'));
  } },
  { id: 55, title: "after B's NEW_OWNER, A closes, B closes: B's pins released", tags: ['P', 'PA'], needs: needPins, run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await entry(c, a, 'm', X(c), 64 * PAGE);
    const b = await c.child('B', a);
    await c.ok(b, V('newOwner'));
    const a1 = await pins(c, a), b1 = await pins(c, b);
    await c.ok(a, 'close');
    await c.ok(b, 'close');
    const b2 = await pinsSettle(c, b, b1 - 256);
    c.check(b1 - b2 === 256, `VmPin(B) ${b1} -> ${b2} KiB, want -256`);
    const a2 = await pins(c, a);
    c.check(a2 === a1, `VmPin(A) ${a1} -> ${a2} KiB`);
  } },

  // ---- §7.8 VHOST_IOTLB_REMAP ----
  { id: 56, title: 'batched REMAP of E, restart, frames flow', tags: ['P+R', 'VA'], needs: needKind, run: async (c) => {
    const how = resumeOrReset(c);
    const s = await liveSetup(c, { reset: how === 'reset' });
    await takeOver(c, s.x);
    await c.ok(s.x, BB()); await c.ok(s.x, REMAP(s.I, s.S, 'ring')); await c.ok(s.x, BE());
    await restart(c, s.x, how, s.bases);
    await flows(c, s.x, 2, 2, ' after REMAP');
    return `${how}-style`;
  } },
  { id: 57, title: 'REMAP perm 3 EFAULT', tags: ['P+R'], needs: needKind, run: async (c) => {
    const s = await liveSetup(c); await takeOver(c, s.x);
    await c.expect(s.x, 'EFAULT', REMAP(s.I, s.S, 'ring', { perm: 3 }));
  } },
  { id: 58, title: 'REMAP size 0 EFAULT (not EINVAL)', tags: ['P+R'], needs: needKind, run: async (c) => {
    const s = await liveSetup(c); await takeOver(c, s.x);
    await c.expect(s.x, 'EFAULT', REMAP(s.I, 0, 'ring'));
  } },
  { id: 59, title: 'REMAP of an unmapped iova EFAULT', tags: ['P+R'], needs: needKind, run: async (c) => {
    const s = await liveSetup(c); await takeOver(c, s.x);
    await c.expect(s.x, 'EFAULT', REMAP(X(c, 3), s.S, 'ring'));
  } },
  { id: 60, title: 'REMAP of half of E, and of E + neighbour, EFAULT', tags: ['P+R'], needs: needKind, run: async (c) => {
    const s = await liveSetup(c); await takeOver(c, s.x);
    await c.expect(s.x, 'EFAULT', REMAP(s.I, s.S / 2, 'ring'));
    await entry(c, s.x, 'n', s.I + BigInt(s.S), PAGE);
    await c.expect(s.x, 'EFAULT', REMAP(s.I, s.S + PAGE, 'ring'));
  } },
  { id: 61, title: 'PA parent without bit 10: REMAP EFAULT, E keeps working', tags: ['P', 'PA'],
    needs: all(needKind, (d) => (d.remap ? 'parent advertises bit 10' : null)), run: async (c) => {
      const a = await c.a();
      await bringUp(c, a);
      await c.expect(a, 'EFAULT', REMAP(ringIova(c), RING_MEM, 'ring'));
      await flows(c, a, 0, 2, ' after the refused REMAP');
    } },
  { id: 62, title: 'dma_map-only / platform-IOMMU parent advertising bit 10: REMAP EFAULT', tags: ['SIM'],
    gate: () => 'needs a dma_map-only or platform-IOMMU parent; not distinguishable through UAPI [SIM]', run: async () => undefined },
  { id: 63, title: 'REMAP asid rules: unused asid, asid ≥ nas, other batch EFAULT', tags: ['P+R'], needs: all(needKind, needNas2), run: async (c) => {
    const s = await liveSetup(c); await takeOver(c, s.x);
    await c.expect(s.x, 'EFAULT', REMAP(s.I, s.S, 'ring', { asid: 1 }));
    await c.expect(s.x, 'EFAULT', REMAP(s.I, s.S, 'ring', { asid: c.dev.nas }));
    await c.ok(s.x, BB(1));
    await c.expect(s.x, 'EFAULT', REMAP(s.I, s.S, 'ring', { asid: 0 }));
    await c.ok(s.x, BE(1));
  } },
  { id: 64, title: "A' REMAP before NEW_OWNER EFAULT", tags: ['P+R'], needs: needKind, run: async (c) => {
    const s = await liveSetup(c);
    await c.ok(s.x, 'map', 'ring');
    await c.expect(s.x, 'EFAULT', REMAP(s.I, s.S, 'ring'));
  } },
  { id: 65, title: 'REMAP repeated and back; UPDATE over E still EFAULT', tags: ['P+R'], needs: needKind, run: async (c) => {
    const s = await liveSetup(c);
    const v1 = await takeOver(c, s.x);
    const v2 = await c.ok(s.x, 'map', 'ring');
    for (const v of [v1, v2, v1]) await c.ok(s.x, REMAP(s.I, s.S, BigInt(v)));
    await c.expect(s.x, 'EFAULT', UPD(s.I, s.S, 'ring'));
  } },
  { id: 66, title: 'non-batched REMAP then restart (Q1 either way)', tags: ['P+R', 'VA', 'Q'], needs: needKind, run: async (c) => {
    const how = resumeOrReset(c);
    const s = await liveSetup(c, { reset: how === 'reset' });
    await takeOver(c, s.x);
    await c.ok(s.x, REMAP(s.I, s.S, 'ring'));
    await restart(c, s.x, how, s.bases);
    const p = await c.ok(s.x, 'send', 2);
    const err = await c.ok(s.x, 'complete', p, 1000);
    if (err === null) return 'frames flow (default: store, then push)';
    await c.ok(s.x, REMAP(s.I, s.S, 'ring'));
    await c.ok(s.x, 'kickAll');
    const err2 = await c.ok(s.x, 'complete', p);
    c.check(err2 === null, `no traffic after a repeated REMAP either: ${err2} (first attempt: ${err})`);
    return `Q1 behaviour: first kick failed (${err}), repeated REMAP fixed it`;
  } },
  { id: 67, title: 'k batched REMAPs make one set_map', tags: ['SIM'],
    gate: () => 'parent set_map calls are not observable through UAPI [SIM]', run: async () => undefined },
  { id: 68, title: 'UPDATE over two mapping pieces: REMAP per piece only', tags: ['P+R', 'VA'], run: async (c) => {
    const a = await c.a();
    await own(c, a);
    await c.ok(a, 'memfd', 'h', 2 * MiB);
    await c.ok(a, 'unmap', 'h');
    const v = await c.ok(a, 'mapHalvesSwapped', 'h');
    await c.ok(a, UPD(X(c), 2 * MiB, 'h'));
    await c.expect(a, 'EFAULT', REMAP(X(c), 2 * MiB, BigInt(v)));
    await c.ok(a, REMAP(X(c), MiB, BigInt(v)));
    await c.ok(a, REMAP(X(c) + BigInt(MiB), MiB, BigInt(v + MiB)));
    return 'as owner A (no exec needed)';
  } },
  { id: 69, title: 'REMAP to a VA of a different memfd ok', tags: ['P+R'], needs: needKind, run: async (c) => {
    const s = await liveSetup(c); await takeOver(c, s.x);
    await c.ok(s.x, 'memfd', 'other', s.S);
    await c.ok(s.x, REMAP(s.I, s.S, 'other'));
    return 'device left suspended, closed';
  } },

  // ---- §7.9 end to end ----
  { id: 70, title: 'reset-style fast path: frames flow, memfd intact, indexes continue', tags: ['P+R', 'VA'], needs: needKind, run: async (c) => {
    const s = await liveSetup(c, { reset: true });
    await takeOver(c, s.x);
    const bytes = await c.ok(s.x, 'peek', 'ring', 0xf0000, 8);
    c.check(bytes === 'c0ffee00deadbeef', `memfd bytes ${bytes}`);
    await c.ok(s.x, BB()); await c.ok(s.x, REMAP(s.I, s.S, 'ring')); await c.ok(s.x, BE());
    await restart(c, s.x, 'reset', s.bases);
    await flows(c, s.x, 2, 2, ' after the update');
    const used = await c.ok(s.x, 'usedIdx') as number[];
    c.check(eq(used, advanced(c, s.used, 2)), `used indexes ${used}, want ${advanced(c, s.used, 2)}`);
    const bases = await c.ok(s.x, 'bases') as number[];
    c.check(eq(bases, advanced(c, s.bases, 2)), `vring bases ${bases}, want ${advanced(c, s.bases, 2)}`);
    return `bases ${s.bases} -> ${bases}`;
  } },
  { id: 71, title: 'resume-style fast path: frames flow', tags: ['P+R', 'VA'],
    needs: all(needKind, (d) => (has(d, F.SUSPEND) && has(d, F.RESUME) ? null : 'needs SUSPEND and RESUME offered')), run: async (c) => {
      const s = await liveSetup(c);
      await takeOver(c, s.x);
      await c.ok(s.x, BB()); await c.ok(s.x, REMAP(s.I, s.S, 'ring')); await c.ok(s.x, BE());
      await restart(c, s.x, 'resume', s.bases);
      await flows(c, s.x, 2, 2, ' after RESUME');
      const used = await c.ok(s.x, 'usedIdx') as number[];
      c.check(eq(used, advanced(c, s.used, 2)), `used indexes ${used}, want ${advanced(c, s.used, 2)}`);
    } },
  { id: 72, title: 'NEW_OWNER-only fast path: time flat in size, pins move', tags: ['P', 'PA'], needs: needPins, run: async (c) => {
    // Scaled down from 1 and 8 GiB to fit RLIMIT_MEMLOCK (8 MiB here): 256 KiB and 4 MiB.
    const times: number[] = [];
    for (const pages of [64, 1024]) {
      const x = await opener(c);
      await own(c, x);
      await entry(c, x, 'm', X(c), pages * PAGE);
      await execPeer(c, x);
      await c.ok(x, V('getStatus')); // warm the new image's FFI path before timing
      const t0 = process.hrtime.bigint();
      await c.ok(x, V('newOwner'));
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      const p = await pins(c, x);
      c.check(p === pages * 4, `VmPin(A') ${p} KiB after NEW_OWNER, want ${pages * 4}`);
      await x.dispose();
    }
    c.check(times[1] <= 4 * times[0] + 25, `NEW_OWNER took ${times[0].toFixed(1)} ms for 256 KiB but ${times[1].toFixed(1)} ms for 4 MiB`);
    return `NEW_OWNER round trip ${times[0].toFixed(1)} ms (256 KiB) vs ${times[1].toFixed(1)} ms (4 MiB), scaled from 1/8 GiB`;
  } },
  { id: 73, title: 'exec of a missing binary ENOENT; old image still owner, frames flow', tags: ['U'], needs: needKind, run: async (c) => {
    const x = await opener(c);
    await bringUp(c, x);
    await flows(c, x, 0, 1);
    const suspended = has(c.dev, F.SUSPEND) && has(c.dev, F.RESUME);
    if (suspended) await c.ok(x, V('suspend'));
    const bases = await c.ok(x, 'bases');
    const fds0 = await c.ok(x, 'fds');
    await c.expect(x, 'ENOENT', 'exec', { binary: '/nonexistent/minivmm-conformance' });
    const fds1 = await c.ok(x, 'fds');
    c.check(fds1.cloexecDev === true, 'FD_CLOEXEC not restored on the device fd');
    c.check(fds1.total === fds0.total, `open fds ${fds0.total} -> ${fds1.total}`);
    c.check(eq(await c.ok(x, 'bases'), bases), 'vring bases changed');
    if (suspended) await c.ok(x, V('resume'));
    await flows(c, x, 1, 2, ' after the failed exec');
    return suspended ? 'restarted with RESUME' : 'device kept running';
  } },
  { id: 74, title: 'slow path: close at exec, reopen, UPDATE again, frames flow', tags: ['U'], needs: needKind, run: async (c) => {
    const x = await opener(c);
    await bringUp(c, x);
    await flows(c, x, 0, 2);
    if (has(c.dev, F.SUSPEND)) await c.ok(x, V('suspend'));
    const bases = await c.ok(x, 'bases');
    await execPeer(c, x, { keepDev: false });
    const t0 = Date.now();
    await c.ok(x, 'openSettled');
    await own(c, x);
    await c.ok(x, 'map', 'ring');
    await c.ok(x, BB()); await c.ok(x, UPD(ringIova(c), RING_MEM, 'ring')); await c.ok(x, BE());
    await c.ok(x, 'eventfds');
    await c.ok(x, 'up', bases);
    const ms = Date.now() - t0;
    await flows(c, x, 2, 2, ' after the slow path');
    if (c.dev.mode === 'pa') { const p = await pins(c, x); c.check(p === RING_MEM / 1024, `VmPin(A') ${p} KiB, want ${RING_MEM / 1024}`); }
    return `re-init ${ms} ms for ${RING_MEM / MiB} MiB`;
  } },
  { id: 75, title: "upstream: inherited fd without NEW_OWNER is stuck until closed", tags: ['U0'], run: async (c) => {
    const x = await opener(c);
    await own(c, x);
    await execPeer(c, x);
    await c.expect(x, 'EBUSY', V('setOwner'));
    await c.expect(x, 'EPERM', V('setVringNum', 0, vnum(c.dev)));
    await c.expect(x, 'EBUSY', 'tryOpen');
    await c.ok(x, 'close');
    await c.ok(x, 'openSettled');
    await c.ok(x, V('setOwner'));
  } },
  { id: 76, title: 'after an update cycle the new image holds exactly the expected fds', tags: ['U'],
    needs: all(needKind, (d) => (d.newOwner ? null : 'needs NEW_OWNER for a completed fast cycle (74 covers the slow path)')), run: async (c) => {
    const remap = c.dev.remap && c.dev.mode === 'va';
    const how = remap ? 'reset' : resumeOrReset(c);
    const s = await liveSetup(c, { reset: how === 'reset' });
    await takeOver(c, s.x);
    if (remap) { await c.ok(s.x, BB()); await c.ok(s.x, REMAP(s.I, s.S, 'ring')); await c.ok(s.x, BE()); }
    await restart(c, s.x, how, s.bases);
    await flows(c, s.x, 2);
    const f = await c.ok(s.x, 'fds');
    c.check(f.device === 1 && f.memfd === 1, `device fds ${f.device}, memfds ${f.memfd}; want 1 and 1`);
    return `${f.total} fds in the new image (1 device, 1 memfd)`;
  } },

  // ---- the device model: vdpa_sim's net and blk (the suite's traffic already assumes their loop-back) ----
  { id: 77, title: 'net receive filter: short and foreign-unicast frames dropped, broadcast/multicast/own MAC looped', tags: ['U'], needs: needNet, run: async (c) => {
    const a = await c.a();
    await bringUp(c, a);
    const mac = await macOf(c, a);
    const other = Buffer.from(mac); other[0] ^= 0x02; // unicast, differs in the first byte
    const pass = [ethFrame(c, BCAST, 64, 1), ethFrame(c, [0x01, 0x00, 0x5e, 0, 0, 1], 64, 2), ethFrame(c, mac, 64, 3)];
    await netExchange(c, a, pass, pass);
    const short = ethFrame(c, BCAST, 64, 4).subarray(0, netHdr(c) + 5);
    await netExchange(c, a, [short, ethFrame(c, other, 64, 5)], []);
    if (mac.some((b) => b !== 0)) return `MAC ${mac.toString('hex')}`;
    // strncmp() stops at the first zero byte: with the all-zero MAC, any destination starting with 00 passes.
    const zeroFirst = ethFrame(c, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55], 64, 6);
    await netExchange(c, a, [zeroFirst], [zeroFirst]);
    return 'all-zero MAC: 00:11:22:33:44:55 passes too (strncmp)';
  } },
  { id: 78, title: 'net TX frame of 5000 bytes: RX gets its first 4096', tags: ['U'], needs: needNet, run: async (c) => {
    const a = await c.a();
    await bringUp(c, a);
    const big = ethFrame(c, BCAST, 5000 - netHdr(c), 7);
    await netExchange(c, a, [big], [big.subarray(0, 4096)]);
  } },
  { id: 79, title: 'net RX overrun: the frame without an RX buffer is dropped, the next waits for a kick', tags: ['U'], needs: needNet, run: async (c) => {
    const a = await c.a();
    await bringUp(c, a);
    const [rx0, tx0] = await c.ok(a, 'usedIdx') as number[];
    const f = [1, 2, 3].map((n) => ethFrame(c, BCAST, 64, 10 + n));
    const rxHeads = await postBufs(c, a, RXQ, [{ off: rxOff(0), len: BUF, write: true }]);
    await postBufs(c, a, TXQ, f.map((data, i) => ({ off: txOff(i), data, write: false })));
    await c.ok(a, 'kick', TXQ);
    await waitUsedOr(c, a, TXQ, tx0 + 2, 'frames 1 and 2');
    await waitUsedOr(c, a, RXQ, rx0 + 1, 'frame 1 on RX');
    await c.ok(a, 'sleep', 150);
    const [, tx1] = await c.ok(a, 'usedIdx') as number[];
    c.check(tx1 === ((tx0 + 2) & 0xffff), `TX used index ${tx1} after the overrun: frame 3 should wait for the next kick (want ${(tx0 + 2) & 0xffff})`);
    rxHeads.push(...await postBufs(c, a, RXQ, [{ off: rxOff(1), len: BUF, write: true }]));
    await c.ok(a, 'kick', RXQ);
    await waitUsedOr(c, a, TXQ, tx0 + 3, 'frame 3 after the kick');
    await waitUsedOr(c, a, RXQ, rx0 + 2, 'frame 3 on RX');
    const got: Buffer[] = [];
    for (const i of [rx0, rx0 + 1]) { const e = await c.ok(a, 'usedElem', RXQ, i); got.push(bytes(await c.ok(a, 'peek', 'ring', rxOff(rxHeads.indexOf(e.id)), e.len))); }
    c.check(got[0].equals(f[0]) && got[1].equals(f[2]), `RX got frames ${got.map((g) => f.findIndex((x) => x.equals(g)) + 1)}, want 1 and 3 (2 lost)`);
  } },
  { id: 80, title: 'blk IN/OUT of a partial sector: served, every byte copied', tags: ['U'], needs: needBlk, run: async (c) => {
    const a = await c.a();
    await bringUp(c, a);
    const [u0] = await c.ok(a, 'usedIdx') as number[];
    const P = Buffer.alloc(512, 0x5a), Q = Buffer.alloc(100, 0xc3);
    const reqs = await postBlk(c, a, [
      blkReq(T_OUT, 1000, SCRATCH, { out: P }), blkReq(T_OUT, 1000, SCRATCH + 0x1000, { out: Q }),
      blkReq(T_IN, 1000, SCRATCH + 0x2000, { inLen: 300 }), blkReq(T_IN, 1000, SCRATCH + 0x3000, { inLen: 600 }),
    ]);
    await c.ok(a, 'kick', 0);
    await waitUsedOr(c, a, 0, u0 + 4, 'four requests');
    const lens = [], statuses = [];
    for (let i = 0; i < 4; i++) {
      lens.push((await c.ok(a, 'usedElem', 0, u0 + i)).len);
      statuses.push(bytes(await c.ok(a, 'peek', 'ring', reqs[i].statusOff, 1))[0]);
    }
    c.check(statuses.every((x) => x === 0), `statuses ${statuses}, want 0 0 0 0 (a partial sector is served)`);
    c.check(eq(lens, [1, 1, 301, 601]), `used lengths ${lens}, want 1,1,301,601`);
    const read = bytes(await c.ok(a, 'peek', 'ring', reqs[2].dataOff, 300));
    c.check(read.equals(Buffer.concat([Q, P.subarray(100, 300)])), 'the 300 bytes read are not the 100 written over the sector written before');
  } },
  { id: 81, title: 'blk GET_ID into 8 bytes: the ID runs over the status byte, no interrupt, the queue waits', tags: ['U'], needs: needBlk, run: async (c) => {
    const a = await c.a();
    await bringUp(c, a);
    const [u0] = await c.ok(a, 'usedIdx') as number[];
    const [full] = await postBlk(c, a, [blkReq(T_GET_ID, 0, SCRATCH, { inLen: 20 })]);
    await c.ok(a, 'kick', 0);
    await waitUsedOr(c, a, 0, u0 + 1, 'GET_ID into 20 bytes');
    const id = bytes(await c.ok(a, 'peek', 'ring', full.dataOff, 20));
    c.check((await c.ok(a, 'usedElem', 0, u0)).len === 21, 'GET_ID into 20 bytes: used length not 21');
    await c.ok(a, 'drainCall', 0);
    const [short, flush] = await postBlk(c, a, [blkReq(T_GET_ID, 0, SCRATCH + 0x1000, { inLen: 8 }), blkReq(T_FLUSH, 0, SCRATCH + 0x2000, {})]);
    await c.ok(a, 'kick', 0);
    await waitUsedOr(c, a, 0, u0 + 2, 'GET_ID into 8 bytes');
    const e = await c.ok(a, 'usedElem', 0, u0 + 1);
    const got = bytes(await c.ok(a, 'peek', 'ring', short.dataOff, 9));
    c.check(e.len === 9 && got.equals(id.subarray(0, 9)), `used length ${e.len}, bytes ${got.toString('hex')}; want 9 and the ID's first 9 bytes ${id.subarray(0, 9).toString('hex')} (status byte included)`);
    await c.ok(a, 'sleep', 150);
    c.check((await c.ok(a, 'usedIdx'))[0] === ((u0 + 2) & 0xffff), 'the FLUSH after it completed without another kick');
    c.check(await c.ok(a, 'drainCall', 0) === 0, 'the short GET_ID was signalled');
    await c.ok(a, 'kick', 0);
    await waitUsedOr(c, a, 0, u0 + 3, 'the FLUSH after a kick');
    c.check(bytes(await c.ok(a, 'peek', 'ring', flush.statusOff, 1))[0] === 0, 'FLUSH status not OK');
    c.check(await c.ok(a, 'drainCall', 0) > 0, 'the FLUSH was not signalled');
    return `ID ${JSON.stringify(id.toString('latin1').replace(/\0+$/, ''))}`;
  } },
  { id: 82, title: 'UPDATE with write permission over a read-only mapping: PA EFAULT, nothing pinned; VA entered', tags: ['U'],
    needs: (d) => (d.mode ? null : 'needs the mode (VA or PA) determined'), run: async (c) => {
      const a = await c.a();
      await own(c, a);
      await c.ok(a, 'memfd', 'm', 4 * PAGE);
      await c.ok(a, 'map', 'm', true); // a second mapping of it, PROT_READ: the one the UPDATEs name
      if (c.dev.mode === 'va') {
        await c.ok(a, UPD(X(c), 4 * PAGE, 'm', { perm: IOTLB_PERM.RW }));
        await c.expect(a, 'EFAULT', UPD(X(c), 4 * PAGE, 'm', { perm: IOTLB_PERM.WO }));
        return 'VA: entered (permissions are checked at DMA time), a second UPDATE overlaps';
      }
      const p0 = c.dev.pins.kind !== 'none' ? await pins(c, a) : null;
      await c.expect(a, 'EFAULT', UPD(X(c), 4 * PAGE, 'm', { perm: IOTLB_PERM.RW }));
      await c.expect(a, 'EFAULT', UPD(X(c), 4 * PAGE, 'm', { perm: IOTLB_PERM.WO }));
      if (p0 !== null) { const p1 = await pins(c, a); c.check(p1 === p0, `VmPin ${p0} -> ${p1} KiB after refused UPDATEs`); }
      await c.ok(a, UPD(X(c), 4 * PAGE, 'm', { perm: IOTLB_PERM.RO }));
      if (p0 !== null) { const p2 = await pins(c, a); c.check(p2 === p0 + 16, `VmPin ${p0} -> ${p2} KiB after a read-only UPDATE of 4 pages, want +16`); }
      return 'PA: RW and WO refused, RO pinned';
    } },
];
