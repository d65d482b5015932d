// Small statistics for the benchmark and soak reports, and the guests' own counters (their
// serial `net ...` / `blk ...` lines).
export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const pos = (s.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}
export const median = (xs: number[]): number => quantile(xs, 0.5);

/** Least-squares slope of y against x. */
export function slope(points: [number, number][]): number {
  const n = points.length;
  if (n < 2) return NaN;
  const mx = points.reduce((a, p) => a + p[0], 0) / n, my = points.reduce((a, p) => a + p[1], 0) / n;
  const num = points.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0), den = points.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  return den === 0 ? NaN : num / den;
}

export interface NetStats { sent: number; received: number; lost: number; duplicated: number; corrupt: number; max_gap_ms: number }
export interface BlkStats { written: number; verified: number; mismatches: number }

/** The last `net ...` / `blk ...` stats lines in the guest's output. */
export function parseStats(out: string): { net?: NetStats; blk?: BlkStats } {
  const last = (re: RegExp) => { let m: RegExpMatchArray | null = null; for (const x of out.matchAll(re)) m = x; return m; };
  const n = last(/^net sent=(\d+) received=(\d+) lost=(\d+) duplicated=(\d+) corrupt=(\d+) max_gap_us=(\d+)/gm);
  const b = last(/^blk written=(\d+) verified=(\d+) mismatches=(\d+)/gm);
  return {
    net: n ? { sent: +n[1], received: +n[2], lost: +n[3], duplicated: +n[4], corrupt: +n[5], max_gap_ms: +n[6] / 1000 } : undefined,
    blk: b ? { written: +b[1], verified: +b[2], mismatches: +b[3] } : undefined,
  };
}
