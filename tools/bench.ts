// `npm run bench`: the performance story. Reports, never fails a test run.
//   npm run bench -- [--sizes 1G,2G,4G,8G,16G] [--updates N] [--json] [--pin-cost-ms-per-gib N]
//                    [--accel kvm,emu] [--only node,ram,misc,emu,touched]
// 1. Live-update blackout of `netloop` on an embedded net,pa device (it pins, like hardware)
//    against guest RAM size, interleaved in one VM: cpr-exec on the new-owner path, cpr-exec on
//    the forced fallback (reopen + re-pin), and cpr-transfer to a pre-started process.
// 2. Against Node's own start-up (`node -e 0`, same binary and environment as an exec'd image),
//    each paired with one in the same run: the cpr-exec blackout without devices and with a va and
//    a pa device, cpr-transfer, VMM start to the guest's first instruction.
// 3. QMP round trip; host-driven frames/s through the embedded device's loopback.
// 4. The emu accelerator's speed: guest instructions per second on counter and memtest (and, where
//    /dev/kvm exists, against KVM in the same run).
// 5. `--only touched` (not in the default set: it writes all of RAM): cpr-exec of a guest that has
//    written every page of its RAM, per accelerator and size (--touched-sizes, --touched-runs).
import { parseArgs } from 'node:util';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir, cpus, totalmem, release } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runUpdate } from '../vmm/update.js';
import { QmpConnection } from '../vmm/qmp.js';
import { parseSize } from '../vmm/config.js';
import { parseStats, quantile, median, slope } from './stats.js';
import { leanEnv } from '../cpr/exec.js';
import { copyBuild, type BuildCopy } from './build-copy.js';
import { emuSpeed, describeEmuResult, type EmuBenchResult } from './emu-bench.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
/** The private copy of the build every VM of the run starts from (main() makes it): a rebuild of dist/ meanwhile cannot break a run. */
let build: BuildCopy;

const r1 = (x: number) => Math.round(x * 10) / 10;
const r2 = (x: number) => Math.round(x * 100) / 100;
const progress = (s: string) => process.stderr.write(`\r\x1b[K${s}`);

export function machineInfo(): Record<string, unknown> {
  return { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, memory_gib: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version, date: new Date().toISOString() };
}

interface Vm { child: ChildProcess; qmp: string; args: string[]; out: () => string; stop: () => Promise<void>; prepareIncoming: () => Promise<{ sock: string; child: ChildProcess }> }

/** A VM whose process may change (cpr-transfer): `child` is the current one, `out` all guest output. */
async function startVm(args: string[], dir: string, waitRe: RegExp): Promise<Vm & { spawnedAt: number }> {
  const qmp = join(dir, `qmp-${Math.random().toString(36).slice(2)}.sock`);
  const spawnedAt = Date.now();
  let out = '', err = '', n = 0;
  const launch = (extra: string[]) => {
    const c = spawn(process.execPath, [build.bin, 'run', ...args, '--qmp', qmp, '--log-level', 'warn', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.on('data', (d) => { out += d; });
    c.stderr!.on('data', (d) => { err += d; });
    return c;
  };
  const vm: Vm & { spawnedAt: number } = {
    child: launch([]), qmp, args, spawnedAt, out: () => out,
    stop: async () => {
      try { const c = await QmpConnection.connect(qmp); await c.execute('quit').catch(() => undefined); c.close(); } catch { vm.child.kill('SIGKILL'); }
      await new Promise((r) => (vm.child.exitCode !== null ? r(null) : vm.child.once('close', r)));
    },
    prepareIncoming: async () => {
      const sock = join(dir, `incoming-${++n}.sock`);
      const child = launch(['--incoming', `cpr-transfer:${sock}`]);
      const deadline = Date.now() + 60_000;
      while (!existsSync(sock)) {
        if (child.exitCode !== null) throw new Error(`incoming process exited (${child.exitCode}): ${err.trim().split('\n').pop()}`);
        if (Date.now() > deadline) throw new Error('incoming process did not listen');
        await new Promise((r) => setTimeout(r, 10));
      }
      return { sock, child };
    },
  };
  const deadline = Date.now() + 120_000;
  while (!waitRe.test(out)) {
    if (vm.child.exitCode !== null) throw new Error(`VM exited (${vm.child.exitCode}): ${err.trim().split('\n').pop()}`);
    if (Date.now() > deadline) throw new Error(`VM did not print ${waitRe}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return vm;
}

type Update = { status: string; 'error-desc'?: string; 'x-cpr': { path: string; downtime: number; phases: Record<string, number> } };

interface Series { downtimes: number[]; phases: Record<string, number[]> }
const newSeries = (): Series => ({ downtimes: [], phases: {} });
function record(s: Series, r: Update): void {
  s.downtimes.push(r['x-cpr'].downtime);
  for (const [k, v] of Object.entries(r['x-cpr'].phases)) (s.phases[k] ??= []).push(v);
}
function summarize(s: Series) {
  return {
    median_ms: r1(median(s.downtimes)), p90_ms: r1(quantile(s.downtimes, 0.9)), n: s.downtimes.length,
    phases: Object.fromEntries(Object.entries(s.phases).map(([k, v]) => [k, r2(median(v))])),
  };
}

async function update(vm: Vm, extra: Record<string, unknown> = {}): Promise<Update> {
  const r = await runUpdate(vm.qmp, null, 120_000, extra) as Update;
  if (r.status !== 'completed') throw new Error(`update failed: ${r['error-desc']}`);
  return r;
}

/** cpr-transfer to a freshly started incoming process; the VM's process becomes that one. */
async function transfer(vm: Vm): Promise<Update> {
  const { sock, child } = await vm.prepareIncoming();
  const r = await update(vm, { mode: 'cpr-transfer', uri: `unix:${sock}` });
  const old = vm.child;
  vm.child = child;
  // The old process unmaps all of RAM as it exits: let that finish before the next measurement.
  await new Promise((res) => (old.exitCode !== null ? res(null) : old.once('close', res)));
  return r;
}

const KINDS = ['new-owner', 'fallback', 'cpr-transfer'] as const;

/** Blackout against RAM size, the three kinds interleaved in the same VM. */
async function blackoutVsRam(sizes: string[], n: number, dir: string, pinCost: number | undefined) {
  const results: Record<string, unknown>[] = [];
  for (const size of sizes) {
    progress(`${size}: starting netloop on sim:net,pa (the first UPDATE pins all of RAM)...`);
    const t0 = Date.now();
    const vm = await startVm(['--guest', 'netloop', '--memory', size, '--vdpa', `sim:net,pa${pinCost !== undefined ? `,pin-cost=${pinCost}` : ''}`], dir, /^net sent=/m);
    const startS = (Date.now() - t0) / 1000;
    const series = { 'new-owner': newSeries(), fallback: newSeries(), 'cpr-transfer': newSeries() };
    for (let i = 0; i < n; i++) {
      for (const path of KINDS) {
        const r = path === 'cpr-transfer' ? await transfer(vm) : await update(vm, { mode: 'cpr-exec', 'x-vdpa-path': path === 'fallback' ? 'fallback' : 'auto' });
        if (r['x-cpr'].path !== (path === 'fallback' ? 'fallback' : 'new-owner')) throw new Error(`asked for ${path}, got ${r['x-cpr'].path}`);
        record(series[path], r);
        progress(`${size}: update ${i + 1}/${n} ${path.padEnd(9)} blackout ${r['x-cpr'].downtime.toFixed(1)} ms`);
        // Settle: a fallback's unpinning and an exited process's unmapping run on after the update.
        await new Promise((res) => setTimeout(res, 1000));
      }
    }
    const net = parseStats(vm.out()).net;
    await vm.stop();
    for (const path of KINDS) {
      results.push({ path, size, gib: parseSize(size) / 2 ** 30, start_s: r1(startS), ...summarize(series[path]), net_lost: net?.lost ?? null });
    }
  }
  progress('');
  return results;
}

/** Wall time of `node -e 0` from spawn to exit, in the environment an exec'd image gets (ms). */
async function bareNodeStart(): Promise<number> {
  const t0 = performance.now();
  const c = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore', env: leanEnv(process.env) });
  await new Promise((r) => c.once('exit', r));
  return performance.now() - t0;
}

interface Paired { median_ms: number; p90_ms: number; node_ms: number; ratio: number; n: number; phases?: Record<string, number> }
/** Each figure beside a bare Node start-up measured right after it; the ratio is the median of the pairs. */
function paired(xs: number[], nodes: number[], phases?: Record<string, number>): Paired {
  return { median_ms: r1(median(xs)), p90_ms: r1(quantile(xs, 0.9)), node_ms: r1(median(nodes)), ratio: r2(median(xs.map((x, i) => x / nodes[i]))), n: xs.length, ...(phases ? { phases } : {}) };
}

/** The live-update targets against Node's own start-up, on the accelerator `accel`. */
async function againstNode(dir: string, n: number, accel: string): Promise<Record<string, Paired>> {
  const out: Record<string, Paired> = {};
  const series = async (name: string, args: string[], waitRe: RegExp, kind: 'cpr-exec' | 'cpr-transfer') => {
    const vm = await startVm([...args, '--accel', accel], dir, waitRe);
    const s = newSeries(), nodes: number[] = [];
    for (let i = 0; i < n; i++) {
      record(s, kind === 'cpr-transfer' ? await transfer(vm) : await update(vm));
      nodes.push(await bareNodeStart());
      progress(`${name}: update ${i + 1}/${n}: ${s.downtimes[i].toFixed(1)} ms, node -e 0 ${nodes[i].toFixed(1)} ms`);
      await new Promise((res) => setTimeout(res, 300));
    }
    await vm.stop();
    const sum = summarize(s);
    out[name] = paired(s.downtimes, nodes, sum.phases);
  };
  await series('cpr-exec, no device', ['--guest', 'counter', '--memory', '1G'], /^counter /m, 'cpr-exec');
  const twoDevices = ['--guest', 'netblk', '--memory', '1G', '--vdpa', 'sim:net,va', '--vdpa', 'sim:blk,pa'];
  await series('cpr-exec, va + pa devices', twoDevices, /^blk written=/m, 'cpr-exec');
  await series('cpr-transfer, va + pa devices', twoDevices, /^blk written=/m, 'cpr-transfer');
  const starts: number[] = [], nodes: number[] = [];
  for (let i = 0; i < n; i++) {
    starts.push((await startupTimes(dir, 1, accel))[0]);
    nodes.push(await bareNodeStart());
  }
  out['start to first instruction'] = paired(starts, nodes);
  progress('');
  return out;
}

/**
 * cpr-exec of a guest that has written every page of its RAM (`counter touch=1`), so the old
 * image's page tables map all of it: one update per fresh VM (the new image maps pages again
 * only as the guest touches them), `runs` VMs per size and accelerator.
 */
interface TouchedResult { accel: string; size: string; gib: number; median_ms: number; exec_ms: number; old_address_space: string; n: number }
async function touchedRam(dir: string, sizes: string[], runs: number, accels: string[]): Promise<TouchedResult[]> {
  const out: TouchedResult[] = [];
  for (const accel of accels) {
    for (const size of sizes) {
      const downs: number[] = [], execs: number[] = [];
      let kept = '';
      for (let i = 0; i < runs; i++) {
        progress(`touched RAM: ${accel} ${size}: VM ${i + 1}/${runs}, writing every page...`);
        const vm = await startVm(['--guest', 'counter', '--memory', size, '--append', 'touch=1', '--accel', accel], dir, /^counter /m);
        const r = await update(vm) as Update & { 'x-cpr': { 'old-address-space'?: string } };
        downs.push(r['x-cpr'].downtime); execs.push(r['x-cpr'].phases.exec);
        kept = r['x-cpr']['old-address-space'] ?? 'torn down by exec';
        await vm.stop();
      }
      out.push({ accel, size, gib: parseSize(size) / 2 ** 30, median_ms: r1(median(downs)), exec_ms: r1(median(execs)), old_address_space: kept, n: runs });
    }
  }
  return out;
}

async function startupTimes(dir: string, n: number, accel = 'auto'): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const vm = await startVm(['--guest', 'counter', '--memory', '1G', '--accel', accel], dir, /^counter /m);
    const c = await QmpConnection.connect(vm.qmp);
    const s = await c.execute('x-query-stats') as { 'first-run-epoch-ms': number };
    c.close();
    out.push(s['first-run-epoch-ms'] - vm.spawnedAt);
    await vm.stop();
    progress(`start to first guest instruction: run ${i + 1}/${n}: ${out[i].toFixed(1)} ms`);
  }
  return out;
}

async function qmpLatency(dir: string, n: number): Promise<number[]> {
  const vm = await startVm(['--guest', 'counter', '--memory', '256M'], dir, /^counter /m);
  const c = await QmpConnection.connect(vm.qmp);
  const lat: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    await c.execute('query-status');
    lat.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  c.close();
  await vm.stop();
  return lat;
}

async function noDeviceBlackout(dir: string, n: number) {
  const vm = await startVm(['--guest', 'counter', '--memory', '1G'], dir, /^counter /m);
  const s = newSeries();
  for (let i = 0; i < n; i++) {
    record(s, await update(vm));
    progress(`no-device blackout (counter, 1G): update ${i + 1}/${n}`);
    await new Promise((res) => setTimeout(res, 100));
  }
  await vm.stop();
  return summarize(s);
}

function loopbackFramesPerSecond(): Record<string, number> {
  const out = execFileSync(process.execPath, [join(build.root, 'dist/devices/vdpa/bench-loopback.js'), '3', '128'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const res: Record<string, number> = {};
  for (const m of out.matchAll(/^(\w+): \d+ frames in [\d.]+ s = (\d+) frames\/s/gm)) res[m[1]] = Number(m[2]);
  return res;
}

async function plot(results: Record<string, unknown>[], machine: Record<string, unknown>, command: string): Promise<string> {
  const vega = await import('vega');
  const { compile } = await import('vega-lite');
  const values = results.map((r) => ({ ...r, hi: r.p90_ms as number, gib: r.gib as number }));
  const spec = compile({
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: 'live-update blackout against guest RAM (netloop on an embedded net,pa device)', subtitle: [`${machine.cpu}, ${machine.cores} cores, ${machine.kernel}, Node ${machine.node}`, command] },
    width: 520, height: 300,
    data: { values },
    encoding: {
      x: { field: 'gib', type: 'quantitative', title: 'guest RAM (GiB)', scale: { type: 'log', base: 2 }, axis: { values: values.map((v) => v.gib as number) } },
      color: { field: 'path', type: 'nominal', title: 'update', sort: [...KINDS], scale: { domain: [...KINDS] } },
    },
    layer: [
      { mark: { type: 'line', point: true }, encoding: { y: { field: 'median_ms', type: 'quantitative', title: 'blackout (ms): median, whisker to p90' } } },
      { mark: { type: 'rule' }, encoding: { y: { field: 'median_ms', type: 'quantitative' }, y2: { field: 'hi' } } },
      { mark: { type: 'tick', orient: 'horizontal' }, encoding: { y: { field: 'hi', type: 'quantitative' } } },
    ],
  } as never).spec;
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  return view.toSVG();
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    sizes: { type: 'string', default: '1G,2G,4G,8G,16G' }, updates: { type: 'string', default: '10' }, json: { type: 'boolean', default: false },
    'pin-cost-ms-per-gib': { type: 'string' }, quick: { type: 'boolean', default: false },
    accel: { type: 'string', default: 'auto' }, only: { type: 'string', default: 'node,ram,misc,emu' },
    'touched-sizes': { type: 'string', default: '1G,4G' }, 'touched-runs': { type: 'string', default: '3' },
  } });
  const only = new Set((values.only as string).split(','));
  const accels = (values.accel as string).split(',');
  const sizes = (values.sizes as string).split(',');
  sizes.forEach(parseSize);
  const n = Number(values.updates);
  const pinCost = values['pin-cost-ms-per-gib'] !== undefined ? Number(values['pin-cost-ms-per-gib']) : undefined;
  const dir = mkdtempSync(join(tmpdir(), 'minivmm-bench-'));
  build = copyBuild(ROOT, join(dir, 'build'));
  const touchedSizes = (values['touched-sizes'] as string).split(',');
  touchedSizes.forEach(parseSize);
  const command = `npm run bench -- --sizes ${values.sizes} --updates ${n} --accel ${values.accel} --only ${values.only}${only.has('touched') ? ` --touched-sizes ${values['touched-sizes']} --touched-runs ${values['touched-runs']}` : ''}`;
  const machine = machineInfo();
  try {
    const vsNode: Record<string, Record<string, Paired>> = {};
    if (only.has('node')) for (const a of accels) vsNode[a] = await againstNode(dir, n, a);
    const results = only.has('ram') ? await blackoutVsRam(sizes, n, dir, pinCost) : [];
    const misc = only.has('misc');
    const startup = misc ? await startupTimes(dir, values.quick ? 3 : 10) : [];
    const qmp = misc ? await qmpLatency(dir, 1000) : [];
    const noDevice = misc ? await noDeviceBlackout(dir, n) : undefined;
    if (misc) progress('loopback frames/s (host-driven, 3 s per mode)...');
    const loopback = misc ? loopbackFramesPerSecond() : {};
    if (only.has('emu')) progress('emu: guest instructions per second (counter, memtest)...');
    const emu: EmuBenchResult[] = only.has('emu') ? await emuSpeed({ kvm: existsSync('/dev/kvm') }) : [];
    const touched = only.has('touched') ? await touchedRam(dir, touchedSizes, Number(values['touched-runs']), accels) : [];
    progress('');
    const byPath = (p: string) => results.filter((r) => r.path === p) as { gib: number; median_ms: number; size: string }[];
    const slopes = Object.fromEntries(KINDS.map((p) => [p, r2(slope(byPath(p).map((r) => [r.gib, r.median_ms])))]));
    const ratios = Object.fromEntries(byPath('new-owner').map((r) => [r.size, r2((byPath('fallback').find((f) => f.size === r.size)?.median_ms ?? NaN) / r.median_ms)]));
    const out = {
      machine, command, against_node: vsNode, emu_instructions_per_s: emu, touched_ram: touched, results,
      slope_ms_per_gib: slopes, ratio_fallback_over_new_owner: ratios,
      startup_to_first_instruction_ms: { median: r1(median(startup)), p90: r1(quantile(startup, 0.9)), n: startup.length },
      qmp_round_trip_ms: { median: r2(median(qmp)), p90: r2(quantile(qmp, 0.9)), n: qmp.length },
      no_device_blackout: noDevice,
      loopback_frames_per_s: loopback,
      pin_cost_ms_per_gib: pinCost ?? 0,
    };
    const resultsDir = join(ROOT, 'bench/results');
    mkdirSync(resultsDir, { recursive: true });
    const stem = join(resultsDir, `bench-${new Date().toISOString().slice(0, 10)}`);
    writeFileSync(`${stem}.json`, `${JSON.stringify(out, null, 2)}\n`);
    if (results.length) writeFileSync(`${stem}.svg`, await plot(results, machine, command));
    if (values.json) { process.stdout.write(`${JSON.stringify(out)}\n`); return; }
    console.log(`minivmm bench: ${machine.cpu}, ${machine.cores} cores, ${machine.memory_gib} GiB, Linux ${machine.kernel}, Node ${machine.node}`);
    const targets: Record<string, string> = { 'cpr-exec, no device': '<= 1.6x node', 'cpr-exec, va + pa devices': '', 'cpr-transfer, va + pa devices': '<= 8 ms', 'start to first instruction': '<= 150 ms' };
    for (const [a, rows] of Object.entries(vsNode)) {
      console.log(`\nagainst Node's own start-up (node -e 0, same binary and environment, one after each figure; accelerator ${a}; ${n} pairs)`);
      console.log('figure                              median     p90   node -e 0   ratio   target');
      for (const [name, r] of Object.entries(rows)) console.log(`${name.padEnd(34)} ${String(r.median_ms).padStart(7)} ${String(r.p90_ms).padStart(7)} ${String(r.node_ms).padStart(11)} ${r.ratio.toFixed(2).padStart(7)}   ${targets[name] ?? ''}`);
      const d = rows['cpr-exec, va + pa devices'], z = rows['cpr-exec, no device'];
      if (d && z) console.log(`devices add ${r1(d.median_ms - z.median_ms)} ms to a cpr-exec blackout (target <= 5 ms); phases with devices: ${Object.entries(d.phases ?? {}).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    }
    if (emu.length) { console.log(''); for (const r of emu) console.log(describeEmuResult(r)); }
    if (touched.length) {
      console.log('\ncpr-exec of a guest that wrote every page of its RAM (counter touch=1; one update per fresh VM)');
      console.log('accel  size  blackout median  exec phase  old address space');
      for (const t of touched) console.log(`${t.accel.padEnd(5)} ${t.size.padStart(5)} ${String(t.median_ms).padStart(16)} ${String(t.exec_ms).padStart(11)}  ${t.old_address_space} (${t.n} VMs)`);
    }
    if (!results.length && !misc) { console.log(`\nwritten: ${stem}.json`); return; }
    console.log(`\nlive-update blackout, netloop on sim:net,pa, ${n} updates per kind and size (ms; phases are medians)`);
    console.log('cpr-exec new-owner, cpr-exec fallback (forced), cpr-transfer (new-owner); "handoff" is the exec or the fd transfer');
    console.log('kind         size  median    p90 |  pause   save handoff  load  decode     vm devices new_owner remap  repin  resume');
    for (const r of results as { path: string; size: string; median_ms: number; p90_ms: number; phases: Record<string, number> }[]) {
      const p: Record<string, number> = { ...r.phases, handoff: r.phases.exec ?? r.phases.transfer };
      console.log(`${r.path.padEnd(12)} ${r.size.padStart(4)} ${String(r.median_ms).padStart(7)} ${String(r.p90_ms).padStart(6)} | ${['pause', 'save', 'handoff', 'load', 'decode', 'vm', 'devices', 'new_owner', 'remap', 'repin', 'resume'].map((k) => String(p[k] ?? '-').padStart(6)).join(' ')}`);
    }
    console.log(`\nslope (ms/GiB): new-owner ${slopes['new-owner']}, fallback ${slopes.fallback}, cpr-transfer ${slopes['cpr-transfer']}`);
    console.log(`fallback / new-owner: ${Object.entries(ratios).map(([s, x]) => `${s} ${x}x`).join(', ')}`);
    if (misc) {
      console.log(`VMM start to first guest instruction: median ${out.startup_to_first_instruction_ms.median} ms, p90 ${out.startup_to_first_instruction_ms.p90} ms`);
      console.log(`QMP round trip (query-status): median ${out.qmp_round_trip_ms.median} ms, p90 ${out.qmp_round_trip_ms.p90} ms`);
    }
    if (noDevice) console.log(`no-device blackout (counter, 1G): median ${noDevice.median_ms} ms, p90 ${noDevice.p90_ms} ms`);
    if (misc) console.log(`embedded loopback, host-driven 64-byte frames: ${Object.entries(loopback).map(([k, v]) => `${k} ${v}/s`).join(', ')}`);
    console.log(`\nwritten: ${stem}.json, ${stem}.svg`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => { process.stderr.write(`\nbench: ${(e as Error).message}\n`); process.exit(1); });
