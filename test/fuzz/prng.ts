// Seeded, reproducible randomness for the fuzz tests and tools/fuzz.ts.
// A failing case prints its seed; rerun with FUZZ_SEED=<seed> to get the same cases again.

export interface Rng {
  readonly seed: number;
  u32(): number;
  /** Integer in [0, n). */
  int(n: number): number;
  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number;
  bool(p?: number): boolean;
  pick<T>(a: readonly T[]): T;
  u64(): bigint;
  bytes(n: number): Buffer;
  /** A random string of `n` characters from `alphabet` (default: printable ASCII). */
  str(n: number, alphabet?: string): string;
  /** A fresh generator derived from this one (for sub-streams that must not shift each other). */
  fork(): Rng;
}

/** sfc32-style generator seeded through splitmix32: fast, good enough, and reproducible. */
export function rng(seed: number): Rng {
  let s = seed >>> 0;
  const split = () => { s = (s + 0x9e3779b9) >>> 0; let z = s; z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0; z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0; return (z ^ (z >>> 16)) >>> 0; };
  let a = split(), b = split(), c = split(), d = split();
  const u32 = (): number => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = ((c << 21) | (c >>> 11)) >>> 0;
    c = (c + t) >>> 0;
    return t >>> 0;
  };
  for (let i = 0; i < 12; i++) u32();
  const PRINTABLE = Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).join('');
  const r: Rng = {
    seed: seed >>> 0,
    u32,
    int: (n) => (n <= 1 ? 0 : n <= 0x100000000 ? Math.floor((u32() / 0x100000000) * n) : Math.floor(((u32() * 0x200000) + (u32() >>> 11)) / 2 ** 53 * n)),
    range: (lo, hi) => lo + r.int(hi - lo + 1),
    bool: (p = 0.5) => u32() / 0x100000000 < p,
    pick: (arr) => arr[r.int(arr.length)],
    u64: () => (BigInt(u32()) << 32n) | BigInt(u32()),
    bytes: (n) => { const out = Buffer.alloc(n); for (let i = 0; i < n; i += 4) { const v = u32(); for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (v >>> (8 * j)) & 0xff; } return out; },
    str: (n, alphabet = PRINTABLE) => { let o = ''; for (let i = 0; i < n; i++) o += alphabet[r.int(alphabet.length)]; return o; },
    fork: () => rng(u32()),
  };
  return r;
}

/** The seed for a run: FUZZ_SEED from the environment, else derived from the clock. */
export function fuzzSeed(salt = 0): number {
  const env = process.env.FUZZ_SEED;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`FUZZ_SEED=${env}: want an integer 0..4294967295`);
    return n >>> 0; // reproduce: the seed a failing test printed
  }
  return ((Date.now() & 0xffffffff) ^ Math.imul(process.pid, 0x9e3779b1) ^ salt) >>> 0;
}

/** How many cases to run: FUZZ_SCALE multiplies the default (e.g. 0.1 for a quick run, 10 for a long one). */
export function fuzzCases(n: number): number {
  const s = Number(process.env.FUZZ_SCALE ?? '1');
  return Math.max(1, Math.round(n * (Number.isFinite(s) && s > 0 ? s : 1)));
}

/** Interesting integers for argument fields. */
export const EDGE_U32 = [0, 1, 2, 3, 4, 7, 8, 15, 16, 255, 256, 257, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
export const EDGE_U64 = [0n, 1n, 0xfffn, 0x1000n, 0x100000n, 0x40000000n, 0x7fffffffn, 0xffffffffn, 0x100000000n, 1n << 47n, (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 0x1000n, (1n << 64n) - 1n];

/** An integer that is usually an edge value, sometimes random. */
export function edgeU32(r: Rng): number { return r.bool(0.6) ? r.pick(EDGE_U32) : r.u32(); }
export function edgeU64(r: Rng): bigint { return r.bool(0.6) ? r.pick(EDGE_U64) : r.u64(); }

/** One line, no stack-trace frames. */
export function isOneLine(text: string): boolean {
  const t = text.replace(/\n$/, '');
  return t.length > 0 && !t.includes('\n') && !/\bat .+:\d+:\d+\)?$/m.test(t);
}
