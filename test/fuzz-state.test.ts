// Fuzz: CPR state blobs. Mutations of a valid blob (a real one captured from a live VM when KVM is
// there, and a plausible synthetic one) through decodeState in-process: a StateError with one
// line, or a state that passed validation; never another exception type. A sample is fed to a
// real new image (MINIVMM_CPR_STATE=3,0,0,0): exit 1 and one line on stderr.
import { beforeAll, describe, expect, it } from 'vitest';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeState, encodeState, loadEncoder, StateError } from '../cpr/envelope.js';
import { describeWith, missing } from './facility.js';
import { runMinivmm, tempDir } from './harness.js';
import { fuzzCases, fuzzSeed, isOneLine, rng } from './fuzz/prng.js';
import { mutateState, plausibleState, unpack, bodyOf } from './fuzz/state.js';
import { captureRealBlob, oneLineProblem } from './fuzz/real.js';

await loadEncoder();
const synthetic = [encodeState(plausibleState()), encodeState(plausibleState({ smp: 2, memory: 4 * 2 ** 30, vdpa: true }))];
let real: Buffer | null = null;

function check(blob: Buffer): string | null {
  try {
    decodeState(blob);
    return null;
  } catch (e) {
    if (!(e instanceof StateError)) return `${(e as Error)?.constructor?.name ?? typeof e} (not StateError): ${String((e as Error)?.message ?? e).split('\n')[0]}`;
    if (!isOneLine(e.message)) return `StateError message is not one line: ${JSON.stringify(e.message.slice(0, 200))}`;
    return null;
  }
}

describe('fuzz: CPR state blobs in-process', () => {
  // With /dev/kvm, a real blob is required: a capture that fails (a broken cpr-exec) fails here.
  beforeAll(async () => {
    if (!missing('guest')) real = await captureRealBlob();
  }, 60_000);

  it('the seeds decode', () => {
    for (const b of synthetic) expect(() => decodeState(b)).not.toThrow();
    if (real) expect(() => decodeState(real!)).not.toThrow();
  });

  it('mutated blobs: StateError with one line, or a validated state', () => {
    const seed = fuzzSeed(0x57a7e);
    const r = rng(seed);
    const seeds = real ? [real, real, ...synthetic] : synthetic;
    const decoded = seeds.map((b) => unpack(bodyOf(b)));
    const N = fuzzCases(30_000);
    const problems = new Map<string, string>();
    const counts: Record<string, number> = {};
    let accepted = 0;
    const t0 = Date.now();
    for (let i = 0; i < N; i++) {
      const k = r.int(seeds.length);
      const { kind, blob } = mutateState(r, seeds[k], decoded[k]);
      counts[kind] = (counts[kind] ?? 0) + 1;
      const p = check(blob);
      if (p === null) { try { decodeState(blob); accepted++; } catch { /* rejected */ } }
      else {
        const key = p.replace(/\d+/g, 'N').slice(0, 120);
        if (!problems.has(key)) problems.set(key, `case ${i} (${kind}, seed ${seed}): ${p}; blob ${blob.subarray(0, 64).toString('hex')}...`);
      }
    }
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    console.log(`state fuzz: ${total} cases in ${Date.now() - t0} ms, seed ${seed}, accepted ${accepted}, by kind ${JSON.stringify(counts)}, real blob ${real ? `${real.length} bytes` : 'none (no /dev/kvm)'}`);
    expect(total).toBe(N);
    expect([...problems.values()], `seed ${seed}`).toEqual([]);
  }, 60_000);
});

describeWith(['guest'], 'fuzz: CPR state blobs fed to a real new image', () => {
  it('~30 mutated blobs: exit 1 and one line each', async () => {
    const seed = fuzzSeed(0x57a7f);
    const r = rng(seed);
    const seeds = real ? [real, ...synthetic] : synthetic;
    const decoded = seeds.map((b) => unpack(bodyOf(b)));
    const dir = tempDir('minivmm-fuzz-state-');
    const failures: string[] = [];
    const N = fuzzCases(30);
    const t0 = Date.now();
    const kinds = ['header', 'raw', 'body', 'truncate', 'extend', 'tree', 'garbage'] as const;
    const one = async (i: number) => {
      const k = r.int(seeds.length);
      const { kind, blob } = mutateState(r, seeds[k], decoded[k], i < kinds.length ? kinds[i] : undefined);
      const p = join(dir, `state-${i}.bin`);
      writeFileSync(p, blob);
      const fd = openSync(p, 'r');
      try {
        const res = await runMinivmm([], { env: { ...process.env, MINIVMM_CPR_STATE: '3,0,0,0' }, stdio: ['ignore', 'pipe', 'pipe', fd], timeoutMs: 20_000 });
        const why = res.signal ? `killed by ${res.signal} (hang?)` : res.code !== 1 ? `exit ${res.code}, stderr ${JSON.stringify(res.stderr.slice(0, 300))}` : oneLineProblem(res.stderr);
        if (why) failures.push(`case ${i} (${kind}, seed ${seed}, blob ${p}): ${why}`);
      } finally { closeSync(fd); }
    };
    for (let i = 0; i < N; i += 2) await Promise.all([one(i), ...(i + 1 < N ? [one(i + 1)] : [])]);
    console.log(`state fuzz (real image): ${N} cases in ${Date.now() - t0} ms, seed ${seed}`);
    expect(failures, `seed ${seed}`).toEqual([]);
  }, 120_000);
});
