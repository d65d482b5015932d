// The §7 conformance suite against the embedded vhost-vdpa daemon in each personality.
// Needs the compiled tree (npx tsc -p .): the suite's roles B and A' are child processes and exec'd
// images running dist/tools/conformance/main.js.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeWith } from './facility.js';

const ROOT = resolve(import.meta.dirname, '..');
const SUITE = join(ROOT, 'dist/tools/conformance/main.js');
const LAUNCH = join(ROOT, 'dist/devices/vdpa/launch.js');

interface Personality { name: string; type: 'net' | 'blk'; dma: 'va' | 'pa'; model?: 'no-new-owner' }
const personalities: Personality[] = [
  { name: 'netva', type: 'net', dma: 'va' },
  { name: 'netpa', type: 'net', dma: 'pa' },
  { name: 'blkva', type: 'blk', dma: 'va' },
  { name: 'netnno', type: 'net', dma: 'va', model: 'no-new-owner' },
];

type Report = { passed: number; failed: number; skipped: number; cases: { id: number; result: string; detail: string }[] };
const reports = new Map<string, Report>();

describeWith(['fuse', 'root'], 'vhost-vdpa conformance (§7) against the embedded daemon', () => {
  for (const p of personalities) {
    it(`${p.type}/${p.dma}${p.model ? `/${p.model}` : ''}: no failures`, async () => {
      expect(existsSync(SUITE), `${SUITE} missing: run npx tsc -p . first`).toBe(true);
      expect(existsSync(LAUNCH), `${LAUNCH} missing: the daemon's launch API is not built`).toBe(true);
      const { runConformance } = await import(SUITE);
      const { startVdpaDaemon } = await import(LAUNCH);
      const dir = mkdtempSync(join(tmpdir(), 'minivmm-conformance-'));
      const daemon = await startVdpaDaemon({ dir, devices: [{ name: p.name, type: p.type, dma: p.dma, ...(p.model ? { model: p.model } : {}) }] });
      const lines: string[] = [];
      try {
        const paths = daemon.paths as string[] | Record<string, string>;
        const device = Array.isArray(paths) ? paths[0] : paths[p.name];
        const r: Report = await runConformance({ device, log: (l: string) => lines.push(l) });
        reports.set(p.name, r);
        const failures = lines.filter((l) => l.startsWith('FAIL'));
        if (failures.length) {
          try { console.log(`daemon status after ${p.name}: ${JSON.stringify(daemon.status())}`); } catch { /* no status */ }
        }
        expect(failures, lines.join('\n')).toEqual([]);
        expect(r.failed).toBe(0);
      } finally {
        await daemon.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    }, 300_000);
  }

  it('at least 40 passes in total over the personalities', () => {
    const total = [...reports.values()].reduce((n, r) => n + r.passed, 0);
    expect(reports.size).toBe(personalities.length);
    expect(total).toBeGreaterThanOrEqual(40);
  });
  afterAll(() => {
    for (const [n, r] of reports) console.log(`conformance ${n}: ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped`);
  });
});
