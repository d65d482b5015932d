// `npm run bench`: cpr-exec blackout of the `counter` guest against RAM size. Reports, never fails.
//   npm run bench -- [--sizes 1G,16G] [--updates 20] [--json]
import { parseArgs } from 'node:util';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus, totalmem, release } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runUpdate } from '../vmm/update.js';
import { parseSize } from '../vmm/cli.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
const BIN = join(ROOT, 'bin/minivmm.js');

export const median = (xs: number[]): number => quantile(xs, 0.5);
export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const pos = (s.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}
const r1 = (x: number) => Math.round(x * 10) / 10;

export function machineInfo(): Record<string, unknown> {
  const cpu = cpus()[0]?.model ?? 'unknown';
  return { cpu, cores: cpus().length, memory_gib: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version, date: new Date().toISOString() };
}

async function startVm(memory: string, dir: string): Promise<{ qmp: string; stop: () => void }> {
  const qmp = join(dir, `qmp-${memory}.sock`);
  const child = spawn(process.execPath, [BIN, 'run', '--guest', 'counter', '--memory', memory, '--qmp', qmp, '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((res, rej) => {
    child.stdout!.on('data', () => res());
    child.once('exit', (c) => rej(new Error(`VM exited with ${c} before printing`)));
  });
  child.stdout!.resume();
  return { qmp, stop: () => child.kill('SIGKILL') };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { sizes: { type: 'string', default: '1G,16G' }, updates: { type: 'string', default: '20' }, json: { type: 'boolean', default: false } } });
  const sizes = (values.sizes as string).split(',');
  sizes.forEach(parseSize);
  const n = Number(values.updates);
  const dir = mkdtempSync(join(tmpdir(), 'minivmm-bench-'));
  const results: Record<string, unknown>[] = [];
  for (const size of sizes) {
    const vm = await startVm(size, dir);
    const downtimes: number[] = [];
    const phases: Record<string, number[]> = {};
    for (let i = 0; i < n; i++) {
      const r = await runUpdate(vm.qmp, null, 30_000) as { status: string; downtime: number; cpr: { phases: Record<string, number> } };
      if (r.status !== 'completed') throw new Error(`update ${i + 1} at ${size} failed: ${JSON.stringify(r)}`);
      downtimes.push(r.downtime);
      for (const [k, v] of Object.entries(r.cpr.phases)) (phases[k] ??= []).push(v);
      process.stderr.write(`\r${size}: update ${i + 1}/${n} blackout ${r.downtime.toFixed(1)} ms   `);
      await new Promise((res) => setTimeout(res, 100));
    }
    process.stderr.write('\n');
    vm.stop();
    results.push({
      path: 'cpr-exec', size, guest: 'counter', updates: n,
      median_ms: r1(median(downtimes)), p90_ms: r1(quantile(downtimes, 0.9)),
      phases: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, r1(median(v))])),
      phases_p90: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, r1(quantile(v, 0.9))])),
    });
  }
  const out = { machine: machineInfo(), command: `npm run bench -- --sizes ${values.sizes} --updates ${n}`, results };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    const dirOut = join(ROOT, 'bench/results');
    mkdirSync(dirOut, { recursive: true });
    writeFileSync(join(dirOut, `cpr-exec-${new Date().toISOString().slice(0, 10)}.json`), JSON.stringify(out, null, 2));
  } else {
    console.log(`cpr-exec blackout, counter guest, ${n} updates per size (${(out.machine as { cpu: string }).cpu}, ${cpus().length} cores)`);
    console.log('size   median   p90    | pause  save  exec  restore resume (medians, ms)');
    for (const r of results as { size: string; median_ms: number; p90_ms: number; phases: Record<string, number> }[]) {
      const p = r.phases;
      console.log(`${r.size.padEnd(6)} ${String(r.median_ms).padStart(6)} ${String(r.p90_ms).padStart(6)} | ${[p.pause, p.save, p.exec, p.restore, p.resume].map((x) => String(x).padStart(5)).join(' ')}`);
    }
  }
}

main().catch((e) => { process.stderr.write(`bench: ${(e as Error).message}\n`); process.exit(1); });
