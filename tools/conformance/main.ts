// minivmm conformance suite for vhost-vdpa devices (docs/vhost-vdpa-live-update.md §7): a real
// /dev/vhost-vdpa-N or the embedded FUSE-served device. Only UAPI actions decide verdicts.
//
//   node dist/tools/conformance/main.js --device PATH [--json FILE] [--only 1,2,47]
//
// The same entry serves as the child roles (B, and A that exec's into A'): see peers.ts.
import { realpathSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { AgentConfig } from './agent.js';
import { servePeer } from './peers.js';
import type { DeviceInfo } from './probe.js';
import type { CaseResult } from './runner.js';
// The case list and the runner are loaded only by the runner process: child roles (B, A') start
// with the op table alone.

export interface ConformanceOptions { device: string; json?: string; log?: (line: string) => void; only?: number[] }
export interface ConformanceReport {
  device: string;
  info: Record<string, unknown>;
  passed: number; failed: number; skipped: number;
  cases: { id: number; title: string; result: 'pass' | 'fail' | 'skip'; detail: string }[];
}

const entry = fileURLToPath(import.meta.url);

const describe = (d: DeviceInfo): string =>
  `device ${d.path}: id ${d.id} (${d.kind ?? 'unknown'}), features 0x${d.features.toString(16)}, backend 0x${d.backend.toString(16)}, ` +
  `vqs ${d.vqs}, nas ${d.nas}, vring max ${d.vringMax}, iova [0x${d.iova.first.toString(16)}, 0x${d.iova.last.toString(16)}], ` +
  `series ${d.series ? 'yes' : 'no'}, mode ${d.mode ?? 'undetermined'} (${d.modeHow}), pins from ${d.pins.kind}${d.fuse ? ', FUSE-served' : ''}`;

export async function runConformance(opts: ConformanceOptions): Promise<ConformanceReport> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const { probe } = await import('./probe.js');
  const { runCases } = await import('./runner.js');
  const dev = probe(opts.device);
  log(`# ${describe(dev)}`);
  const cfg: AgentConfig = { device: dev.path, pins: dev.pins, kind: dev.kind ?? 'net', entry };
  const results: CaseResult[] = await runCases(dev, cfg, log, opts.only ? new Set(opts.only) : undefined);
  const count = (r: string) => results.filter((x) => x.result === r).length;
  const report: ConformanceReport = {
    device: dev.path,
    info: JSON.parse(JSON.stringify(dev, (_k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))),
    passed: count('pass'), failed: count('fail'), skipped: count('skip'),
    cases: results.map(({ id, title, result, detail }) => ({ id, title, result, detail })),
  };
  log(`${report.passed} passed, ${report.failed} failed, ${report.skipped} skipped`);
  if (opts.json) writeFileSync(opts.json, `${JSON.stringify(report, null, 2)}\n`);
  return report;
}

function usage(why: string): never {
  console.error(`conformance: ${why}\nusage: node dist/tools/conformance/main.js --device PATH [--json FILE] [--only N,N,...]`);
  process.exit(2);
}

async function cli(argv: string[]): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, strict: true, options: { device: { type: 'string' }, json: { type: 'string' }, only: { type: 'string' } } }));
  } catch (e) { usage((e as Error).message.split('\n')[0]); }
  if (!values.device) usage('--device PATH is required');
  const only = values.only?.split(',').map(Number);
  if (only?.some((n) => !Number.isInteger(n))) usage(`--only ${values.only}: case numbers, comma-separated`);
  const r = await runConformance({ device: values.device, json: values.json, only });
  process.exit(r.failed > 0 ? 1 : 0);
}

const isEntry = (() => { try { return realpathSync(process.argv[1] ?? '') === realpathSync(entry); } catch { return false; } })();
if (process.env.MINIVMM_CONF_ROLE === 'peer') servePeer();
else if (isEntry) cli(process.argv.slice(2)).catch((e) => { console.error(e); process.exit(2); });
