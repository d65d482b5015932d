// CPR state blobs for fuzzing: a plausible state (the shapes and sizes a real VM saves), and
// mutators at three levels: raw bytes, the msgpack body with the header fixed up, and the decoded
// object tree (a field deleted, retyped, emptied, nulled) re-encoded.
import { crc32 } from 'node:zlib';
import { Packr } from 'msgpackr';
import { sampleVmmState } from '../../vmm/state.js';
import { STATE_VERSION, type CprState } from '../../cpr/envelope.js';
import { edgeU32, type Rng } from './prng.js';

const HEADER = 20;
const packr = new Packr({ useRecords: false, int64AsType: 'bigint', moreTypes: true } as never);

/** A state shaped like a real VM's (vmm/state.ts), with the fds its registry would name. */
export function plausibleState(opts: Parameters<typeof sampleVmmState>[0] = {}): CprState {
  const vmm = sampleVmmState(opts);
  const fds = vmm.machine.memory.map((_, i) => ({ name: 'ram', id: i, fd: 20 + i }));
  fds.push({ name: 'qmp', id: 0, fd: 30 });
  if (opts.vdpa) fds.push({ name: 'vdpa', id: 0, fd: 31 });
  return { vmm, fds };
}

/** Header (magic, version, length, CRC32) in front of a msgpack body. */
export function frame(body: Buffer, version = STATE_VERSION): Buffer {
  const h = Buffer.alloc(HEADER);
  Buffer.from('MVMMCPR\0').copy(h, 0);
  h.writeUInt32LE(version, 8); h.writeUInt32LE(body.length, 12); h.writeUInt32LE(crc32(body), 16);
  return Buffer.concat([h, body]);
}
export const bodyOf = (blob: Buffer): Buffer => blob.subarray(HEADER);
export const pack = (v: unknown): Buffer => packr.pack(v);
export const unpack = (b: Buffer): unknown => packr.unpack(b);

function mutateBytes(r: Rng, b: Buffer, region: [number, number]): Buffer {
  const out = Buffer.from(b);
  const [lo, hi] = region;
  const n = 1 + r.int(8);
  for (let i = 0; i < n && hi > lo; i++) {
    const at = lo + r.int(hi - lo);
    switch (r.int(4)) {
      case 0: out[at] ^= 1 << r.int(8); break;
      case 1: out[at] = r.int(256); break;
      case 2: out[at] = r.pick([0, 0xff, 0x7f, 0x80, 0xc0, 0xc1, 0xd4, 0xd5, 0xc7, 0xc8, 0xdc, 0xdd, 0xde, 0xdf, 0xc4, 0xc5, 0xc6]); break;
      default: if (at + 4 <= out.length) out.writeUInt32LE(edgeU32(r), at);
    }
  }
  return out;
}

/** Every path to a value in a decoded state. */
function paths(v: unknown, at: (string | number)[] = [], out: (string | number)[][] = [], depth = 0): (string | number)[][] {
  out.push(at);
  if (depth > 6 || v === null || typeof v !== 'object' || Buffer.isBuffer(v) || v instanceof Uint8Array) return out;
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out, depth + 1));
  else for (const k of Object.keys(v as object)) paths((v as Record<string, unknown>)[k], [...at, k], out, depth + 1);
  return out;
}

function junk(r: Rng): unknown {
  return r.pick<() => unknown>([
    () => null, () => undefined, () => 0, () => -1, () => 2 ** 53, () => -(2 ** 31), () => 1.5, () => NaN, () => Infinity,
    () => '', () => 'x'.repeat(r.int(300)), () => '../../etc/passwd', () => true, () => [], () => [null], () => ({}),
    () => ({ a: 1 }), () => Buffer.alloc(0), () => Buffer.alloc(r.int(64)), () => 1n << 63n, () => -5n, () => edgeU32(r),
    () => Array.from({ length: 1 + r.int(5) }, () => null), () => [{}, {}], () => ({ name: 'ram', id: 0, fd: 0 }),
  ])();
}

/** Replace, delete or shuffle one field of the decoded tree, re-encode, fix the header. */
function mutateTree(r: Rng, state: unknown): Buffer {
  const tree = structuredCloneish(state);
  const ps = paths(tree);
  const n = 1 + r.int(3);
  for (let k = 0; k < n; k++) {
    const p = r.pick(ps);
    if (p.length === 0) return frame(pack(junk(r)));
    let parent: Record<string | number, unknown> = tree as never;
    for (const key of p.slice(0, -1)) { if (parent === null || typeof parent !== 'object') break; parent = parent[key] as never; }
    if (parent === null || typeof parent !== 'object' || Buffer.isBuffer(parent)) continue;
    const key = p[p.length - 1];
    const op = r.int(6);
    if (op === 0) { if (Array.isArray(parent)) parent.splice(Number(key), 1); else delete parent[key]; }
    else if (op === 1 && Buffer.isBuffer(parent[key])) parent[key] = (parent[key] as Buffer).subarray(0, r.int((parent[key] as Buffer).length));
    else if (op === 2 && Array.isArray(parent[key])) (parent[key] as unknown[]).push(junk(r));
    else parent[key] = junk(r);
  }
  return frame(pack(tree));
}

function structuredCloneish(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return Buffer.from(v);
  if (Array.isArray(v)) return v.map(structuredCloneish);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, structuredCloneish(x)]));
  return v;
}

export type StateMutation = 'header' | 'raw' | 'body' | 'truncate' | 'extend' | 'tree' | 'garbage';
export const STATE_MUTATIONS: StateMutation[] = ['header', 'raw', 'body', 'truncate', 'extend', 'tree', 'tree', 'body', 'garbage'];

/** One mutation of `blob` (a valid blob whose decoded form is `state`). */
export function mutateState(r: Rng, blob: Buffer, state: unknown, kind: StateMutation = r.pick(STATE_MUTATIONS)): { kind: StateMutation; blob: Buffer } {
  switch (kind) {
    case 'header': return { kind, blob: mutateBytes(r, blob, [0, HEADER]) };
    case 'raw': return { kind, blob: mutateBytes(r, blob, [0, blob.length]) };
    case 'body': { const b = mutateBytes(r, bodyOf(blob), [0, blob.length - HEADER]); return { kind, blob: frame(b) }; }
    case 'truncate': { const cut = r.int(blob.length); return { kind, blob: r.bool() ? blob.subarray(0, cut) : frame(bodyOf(blob).subarray(0, Math.max(0, cut - HEADER))) }; }
    case 'extend': { const extra = r.bytes(1 + r.int(64)); return { kind, blob: r.bool() ? Buffer.concat([blob, extra]) : frame(Buffer.concat([bodyOf(blob), extra])) }; }
    case 'tree': return { kind, blob: mutateTree(r, state) };
    default: return { kind, blob: r.bool() ? r.bytes(r.int(200)) : frame(r.bytes(r.int(400))) };
  }
}
