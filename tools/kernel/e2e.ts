// minivmm kernel-test, end-to-end stage: runs inside the kernel-test guest (init.sh starts it after
// the conformance suite). It starts minivmm on the guest kernel's own vhost-vdpa devices (vdpa_sim
// net + blk, the `netblk` toy guest on nested KVM), waits for real traffic, live-updates it (cpr-exec,
// then cpr-transfer and an injected cpr-transfer rollback where the devices offer VHOST_NEW_OWNER)
// and checks every update against what the kernel shows, never against the VMM's own figures:
//   - the device's backend features and DMA mode (the conformance probe, before the VMM opens it);
//   - VmPin of the VMM process (/proc/PID/status, exact) before and after, and its lowest value
//     seen during the update; /proc/vmstat nr_foll_pin_acquired/released (pages pinned/unpinned);
//   - which processes hold the device nodes open (/proc/*/fd), and the VMM's open fds;
//   - vdpa_sim_net's queue counters (`vdpa dev vstats`: FEATURES_OK, rings moving);
//   - the guest's own counters on its serial line (frames lost/duplicated/corrupt, blocks verified,
//     longest gap between received frames).
// The VMM's own report (path, blackout, phases) is recorded beside them and cross-checked.
//
//   node dist/tools/kernel/e2e.js --net /dev/vhost-vdpa-0 --blk /dev/vhost-vdpa-1 --dma va|pa
//        [--memory 256M] [--json FILE] [--work DIR]
//
// Lines go to stdout as they happen ("e2e <dma>: ..."); the exit status is 0 for a pass, 1 for a
// failure (each named "FAIL: <step>: <what>"), 2 for bad arguments.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { probe, type DeviceInfo } from '../conformance/probe.js';
import { vmPinKiB, vmPinUnderflowed } from '../conformance/agent.js';
import { parseStats, type NetStats, type BlkStats } from '../stats.js';
import { prlimit, RLIMIT_MEMLOCK } from '../../src/libc.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, existsSync(join(HERE, '../../package.json')) ? '../..' : '../../..');
const BIN = join(REPO, 'bin', 'minivmm.js');
/** How long the guest has to show traffic again after an update (TCG + nested KVM: seconds). */
const TRAFFIC_TIMEOUT_MS = 120_000;

export interface E2eUpdate {
  n: number; mode: 'cpr-exec' | 'cpr-transfer'; intent: 'update' | 'forced-fallback' | 'rollback' | 'refused';
  status: string; path: string | null; rolled_back: boolean; downtime_ms: number | null; phases: Record<string, number> | null;
  /** The kernel's view, VmPin in KiB as decimal strings (exact: read as bigints). */
  vmpin_before: string | null; vmpin_after: string | null; vmpin_min: string | null;
  pins_acquired: number; pins_released: number;
  /** The guest's longest gap between received frames in the stats periods around this update (its own clock). */
  guest_gap_ms: number | null; fds: number | null; holders: Record<string, number[]>;
  problems: string[];
}
export interface E2eReport {
  device: string; mode: 'va' | 'pa'; memory: string; kernel: string;
  devices: { path: string; name: string | null; kind: string | null; backend: string; new_owner: boolean; remap: boolean; dma: string | null; how: string }[];
  expected_path: 'new-owner' | 'fallback';
  updates: E2eUpdate[];
  net?: NetStats; blk?: BlkStats; vstats?: Record<string, unknown>;
  /** The guest's longest gap between frames before any update: what its own console output costs it. */
  guest_gap_before_updates_ms: number | null;
  ratio_fallback_to_new_owner: number | null;
  /** The same for the VMM's devices phase (reopen + re-pin vs NEW_OWNER + REMAP), the part the paths differ in. */
  ratio_devices_phase?: number;
  seconds: number; problems: string[]; verdict: 'pass' | 'fail';
}

// ---------------------------------------------------------------------------------------------
// The kernel's view

/** nr_foll_pin_acquired / nr_foll_pin_released from /proc/vmstat: pages pinned and unpinned (FOLL_PIN), system-wide. */
function pinCounters(): { acquired: number; released: number } {
  const text = readFileSync('/proc/vmstat', 'utf8');
  const get = (k: string): number => Number(new RegExp(`^${k} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
  return { acquired: get('nr_foll_pin_acquired'), released: get('nr_foll_pin_released') };
}

/** Pids holding `dev` open, from /proc/* /fd (the kernel's view of who has the device). */
function holders(dev: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    let fds: string[];
    try { fds = readdirSync(`/proc/${p}/fd`); } catch { continue; }
    for (const fd of fds) {
      try { if (readlinkSync(`/proc/${p}/fd/${fd}`) === dev) { pids.push(Number(p)); break; } } catch { /* closed meanwhile */ }
    }
  }
  return pids;
}

function fdCount(pid: number): number | null {
  try { return readdirSync(`/proc/${pid}/fd`).length; } catch { return null; }
}

/** The vdpa device name (vdpa0, ...) behind /dev/vhost-vdpa-N. */
function vdpaName(dev: string): string | null {
  const node = dev.split('/').pop()!;
  try {
    for (const d of readdirSync('/sys/bus/vdpa/devices')) if (existsSync(`/sys/bus/vdpa/devices/${d}/${node}`)) return d;
  } catch { /* no sysfs */ }
  return null;
}

/** `vdpa -j dev vstats show NAME qidx Q`: the parent's per-queue counters (needs FEATURES_OK). */
function vstats(name: string, qidx: number): { ok: true; counters: Record<string, number> } | { ok: false; error: string } {
  const r = spawnSync('vdpa', ['-j', 'dev', 'vstats', 'show', name, 'qidx', String(qidx)], { encoding: 'utf8' });
  if (r.status !== 0) return { ok: false, error: (r.stderr || r.stdout || `exit ${r.status}`).trim() };
  const counters: Record<string, number> = {};
  const walk = (o: unknown, prefix: string): void => {
    if (o && typeof o === 'object') for (const [k, v] of Object.entries(o)) walk(v, prefix ? `${prefix}.${k}` : k);
    else if (typeof o === 'number' && !prefix.endsWith('qidx')) counters[prefix.split('.').pop()!] = o;
  };
  try { walk(JSON.parse(r.stdout), ''); } catch (e) { return { ok: false, error: `unparsable: ${(e as Error).message}` }; }
  return { ok: true, counters };
}

// ---------------------------------------------------------------------------------------------
// The VMM, through its command line and QMP only

class Vmms {
  out = ''; // the guest's serial line, from every process the guest lived in
  readonly children: ChildProcess[] = [];
  readonly logs: string[] = [];
  current!: ChildProcess;
  constructor(private readonly logPath: string) {}

  launch(args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
    const c = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    const tag = `[pid ${c.pid}] `;
    c.stdout!.on('data', (d: Buffer) => { this.out += d.toString(); });
    c.stderr!.on('data', (d: Buffer) => {
      for (const l of d.toString().split('\n')) if (l.trim()) this.logs.push(tag + l);
      writeFileSync(this.logPath, `${this.logs.join('\n')}\n`);
    });
    c.on('exit', (code, sig) => { this.logs.push(`${tag}exited ${sig ?? code}`); writeFileSync(this.logPath, `${this.logs.join('\n')}\n`); });
    this.children.push(c);
    return c;
  }

  alive(c: ChildProcess): boolean { return c.exitCode === null && c.signalCode === null; }
  tail(n = 15): string { return this.logs.slice(-n).join('\n'); }

  /** Wait until the serial output after `from` matches, or fail naming what was awaited. */
  async waitOutput(from: number, test: (text: string) => boolean, what: string, ms = TRAFFIC_TIMEOUT_MS): Promise<void> {
    const end = Date.now() + ms;
    while (!test(this.out.slice(from))) {
      if (!this.children.some((c) => this.alive(c))) throw new Error(`${what}: the VMM exited (${this.current.exitCode ?? this.current.signalCode})`);
      if (Date.now() > end) throw new Error(`${what}: not within ${ms / 1000} s`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async exited(c: ChildProcess, ms: number): Promise<boolean> {
    if (!this.alive(c)) return true;
    return new Promise((res) => {
      const t = setTimeout(() => res(false), ms);
      c.once('exit', () => { clearTimeout(t); res(true); });
    });
  }
}

/** Run a minivmm CLI command (update, qmp) to completion: its stdout, stderr and status. */
function cli(args: string[], timeoutMs = 300_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const c = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    c.stdout.on('data', (d) => { stdout += d; });
    c.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('close', (status) => { clearTimeout(t); res({ status, stdout, stderr }); });
  });
}

/** The last whole stats lines of the guest (a line still being written is not counted). */
function stats(out: string): { net?: NetStats; blk?: BlkStats } {
  return parseStats(out.slice(0, out.lastIndexOf('\n') + 1));
}

// ---------------------------------------------------------------------------------------------

interface Options { net: string; blk: string; dma: 'va' | 'pa'; memory: string; json?: string; work: string }

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv, strict: true,
    options: { net: { type: 'string' }, blk: { type: 'string' }, dma: { type: 'string' }, memory: { type: 'string', default: '256M' }, json: { type: 'string' }, work: { type: 'string', default: '/tmp/minivmm-e2e' } },
  });
  if (!values.net || !values.blk) throw new Error('--net PATH and --blk PATH are required');
  if (values.dma !== 'va' && values.dma !== 'pa') throw new Error('--dma va|pa is required');
  return { net: values.net, blk: values.blk, dma: values.dma, memory: values.memory!, json: values.json, work: values.work! };
}

export async function runE2e(o: Options): Promise<E2eReport> {
  const t0 = Date.now();
  const say = (s: string): void => { process.stdout.write(`e2e ${o.dma}: ${s}\n`); };
  const problems: string[] = [];
  const fail = (s: string): void => { problems.push(s); say(`FAIL: ${s}`); };
  rmSync(o.work, { recursive: true, force: true });
  mkdirSync(o.work, { recursive: true });
  const qmp = join(o.work, 'qmp.sock');
  const vmms = new Vmms(join(o.work, 'vmm.log'));
  const vstatsAtStart: Record<string, Record<string, number>[]> = {};
  const devs = [realpathSync(o.net), realpathSync(o.blk)];
  const report: E2eReport = {
    device: devs.join('+'), mode: o.dma, memory: o.memory, kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    devices: [], expected_path: 'fallback', updates: [], guest_gap_before_updates_ms: null, ratio_fallback_to_new_owner: null,
    seconds: 0, problems, verdict: 'fail',
  };

  // 1. The kernel's view of the devices, before the VMM opens them.
  const infos: DeviceInfo[] = [];
  for (const d of devs) {
    const i = probe(d);
    infos.push(i);
    const name = vdpaName(d);
    report.devices.push({ path: d, name, kind: i.kind, backend: `0x${i.backend.toString(16)}`, new_owner: i.newOwner, remap: i.remap, dma: i.mode, how: i.modeHow });
    say(`${d} (${name}, ${i.kind}): backend features 0x${i.backend.toString(16)}, NEW_OWNER ${i.newOwner ? 'yes' : 'no'}, IOTLB_REMAP ${i.remap ? 'yes' : 'no'}, DMA ${i.mode ?? '?'} (${i.modeHow})`);
    if (i.mode !== o.dma) fail(`probe: ${d} is in ${i.mode ?? 'an undetermined'} DMA mode, expected ${o.dma} (vdpa_sim.use_va=${o.dma === 'va' ? 1 : 0})`);
    if (i.newOwner && i.remap !== (o.dma === 'va')) fail(`probe: ${d} ${i.remap ? 'advertises' : 'lacks'} IOTLB_REMAP in ${o.dma.toUpperCase()} mode (the series: REMAP with use_va, none without)`);
  }
  const newOwner = infos.every((i) => i.newOwner);
  report.expected_path = newOwner ? 'new-owner' : 'fallback';
  const ramKiB = BigInt(Math.round(Number(/^(\d+)M$/i.exec(o.memory)?.[1] ?? 0))) * 1024n;

  // PA mode pins all of guest RAM in the VMM's name: lift RLIMIT_MEMLOCK (root may) for it and its images.
  const inf = (1n << 64n) - 1n;
  try { prlimit(0, RLIMIT_MEMLOCK, [inf, inf]); } catch (e) { fail(`cannot lift RLIMIT_MEMLOCK: ${(e as Error).message}`); }
  const start = Date.now();
  const accel = existsSync('/dev/kvm') ? [] : ['--accel', 'emu'];
  if (accel.length) say('no /dev/kvm in this guest (nested SVM unavailable): trying --accel emu');
  vmms.current = vmms.launch(['run', '--guest', 'netblk', '--memory', o.memory, '--qmp', qmp, '--log-level', 'info',
    ...devs.flatMap((d) => ['--vdpa', d]), ...accel]);
  const tail = (): string => `\n--- last lines of the VMM's log (${join(o.work, 'vmm.log')}):\n${vmms.tail()}`;
  try {
    // 2. Real traffic: frames back and blocks verified, by the guest's own count.
    await vmms.waitOutput(0, (t) => { const s = stats(t); return (s.net?.received ?? 0) > 0 && (s.blk?.verified ?? 0) > 0; }, 'first traffic (frames received and blocks verified)');
    say(`traffic after ${((Date.now() - start) / 1000).toFixed(1)} s: ${JSON.stringify(stats(vmms.out))}`);
    for (const [i, d] of devs.entries()) {
      const name = vdpaName(d);
      if (!name || infos[i].kind !== 'net') continue;
      const q = [0, 1].map((qidx) => vstats(name, qidx));
      if (q.every((x) => x.ok)) vstatsAtStart[name] = q.map((x) => (x as { counters: Record<string, number> }).counters);
    }
    // Three more stats periods without an update: the guest's gaps when nothing happens.
    const quiet = vmms.out.length;
    await vmms.waitOutput(quiet, (t) => (t.match(/^net sent=.*\n/gm) ?? []).length >= 3, 'three stats lines');
    report.guest_gap_before_updates_ms = windowGap(vmms.out.slice(quiet));
    say(`the guest's longest gap between frames with no update running: ${report.guest_gap_before_updates_ms?.toFixed(0)} ms`);

    // 3. The updates.
    const plan: { mode: E2eUpdate['mode']; intent: E2eUpdate['intent'] }[] = [
      { mode: 'cpr-exec', intent: 'update' }, { mode: 'cpr-exec', intent: 'update' }, { mode: 'cpr-exec', intent: 'update' },
    ];
    if (newOwner) {
      // The re-pin cost on this kernel: updates forced down the slow path (same memory, same run);
      // three in PA mode, where the ratio is reported (cpr-exec blackouts under TCG are noisy).
      for (let i = o.dma === 'pa' ? 3 : 1; i > 0; i--) plan.push({ mode: 'cpr-exec', intent: 'forced-fallback' });
      plan.push({ mode: 'cpr-transfer', intent: 'update' }, { mode: 'cpr-transfer', intent: 'update' }, { mode: 'cpr-transfer', intent: 'rollback' });
    } else {
      plan.push({ mode: 'cpr-transfer', intent: 'refused' }); // no NEW_OWNER: refused before pausing, guest untouched
    }
    let n = 0;
    for (const step of plan) {
      n++;
      const u = await oneUpdate(n, step.mode, step.intent, o, vmms, qmp, devs, ramKiB, report.expected_path);
      report.updates.push(u);
      const gap = u.guest_gap_ms !== null ? `, guest's longest gap ${u.guest_gap_ms.toFixed(0)} ms` : '';
      const pin = `VmPin ${u.vmpin_before} -> ${u.vmpin_after} kB (lowest ${u.vmpin_min}), pages pinned +${u.pins_acquired} unpinned +${u.pins_released}`;
      say(`update ${n} ${step.mode}${step.intent !== 'update' ? ` (${step.intent})` : ''}: ${u.rolled_back ? 'rolled back' : u.status === 'completed' ? `${u.path}, blackout ${u.downtime_ms?.toFixed(0)} ms` : u.status}${gap}; ${pin}; fds ${u.fds}`);
      for (const p of u.problems) fail(`update ${n} (${step.mode}${step.intent !== 'update' ? `, ${step.intent}` : ''}): ${p}`);
      // A VMM that died, or a guest whose traffic did not come back, makes the rest meaningless.
      if (u.problems.length && (!vmms.alive(vmms.current) || u.problems.some((p) => p.startsWith('traffic after the update')))) {
        fail(`update ${n}: the remaining ${plan.length - n} update(s) not run`);
        break;
      }
    }

    // 4. After the last update: the kernel's device state and the guest's counters.
    const final = await finalChecks(o, vmms, devs, infos, fail, vstatsAtStart);
    report.vstats = final;
    const q = await cli(['qmp', '--socket', qmp, 'quit']);
    if (q.status !== 0) fail(`quit: ${(q.stderr || q.stdout).trim()}`);
    if (!await vmms.exited(vmms.current, 60_000)) fail('quit: the VMM did not exit within 60 s');
  } catch (e) {
    fail(`${(e as Error).message}${tail()}`);
  } finally {
    for (const c of vmms.children) if (vmms.alive(c)) c.kill('SIGKILL');
  }
  const s = stats(vmms.out);
  report.net = s.net; report.blk = s.blk;
  if (!s.net || s.net.received === 0) fail('net: no frame received');
  else if (s.net.lost || s.net.duplicated || s.net.corrupt) fail(`net: ${s.net.lost} lost, ${s.net.duplicated} duplicated, ${s.net.corrupt} corrupt`);
  if (!s.blk || s.blk.verified === 0) fail('blk: no block verified');
  else if (s.blk.mismatches) fail(`blk: ${s.blk.mismatches} mismatches`);
  if (s.net) say(`net: sent ${s.net.sent}, received ${s.net.received}, lost ${s.net.lost}, duplicated ${s.net.duplicated}, corrupt ${s.net.corrupt}, longest gap ${s.net.max_gap_ms} ms (guest clock)`);
  if (s.blk) say(`blk: written ${s.blk.written}, verified ${s.blk.verified}, mismatches ${s.blk.mismatches}`);
  const done = (p: string, intent = 'update') => report.updates.filter((u) => u.mode === 'cpr-exec' && u.intent === intent && u.path === p && u.downtime_ms !== null).map((u) => u.downtime_ms!);
  const median = (a: number[]) => { const b = [...a].sort((x, y) => x - y); return b.length ? b[Math.floor((b.length - 1) / 2)] : null; };
  const fb = median(done('fallback', 'forced-fallback')), no = median(done('new-owner'));
  if (fb !== null && no !== null) {
    report.ratio_fallback_to_new_owner = Math.round((fb / no) * 100) / 100;
    // The blackout under TCG is mostly the new image's start-up; the devices phase is where the paths differ.
    const phase = (p: string, intent = 'update') => median(report.updates.filter((u) => u.mode === 'cpr-exec' && u.intent === intent && u.path === p && u.phases).map((u) => u.phases!.devices));
    const pf = phase('fallback', 'forced-fallback'), pn = phase('new-owner');
    if (pf !== null && pn) report.ratio_devices_phase = Math.round((pf / pn) * 100) / 100;
    say(`cpr-exec, ${o.memory}, medians: blackout fallback ${fb.toFixed(0)} ms / new-owner ${no.toFixed(0)} ms = ${report.ratio_fallback_to_new_owner}; ` +
      `devices phase fallback ${pf?.toFixed(0)} ms / new-owner ${pn?.toFixed(0)} ms = ${report.ratio_devices_phase ?? '?'}`);
  }
  if (problems.length && !problems.some((p) => p.includes('--- last lines'))) say(`last lines of the VMM's log:\n${vmms.tail()}`);
  report.seconds = Math.round((Date.now() - t0) / 100) / 10;
  report.verdict = problems.length ? 'fail' : 'pass';
  say(`${report.verdict.toUpperCase()} in ${report.seconds} s`);
  if (o.json) writeFileSync(o.json, `${JSON.stringify(report, null, 2)}\n`);
  return report;
}

/** The longest of the guest's per-period gaps (`gap_us=`, since its previous stats line) in `text`, in ms. */
function windowGap(text: string): number | null {
  const gaps = [...text.matchAll(/^net sent=.* gap_us=(\d+)/gm)].map((m) => Number(m[1]) / 1000);
  return gaps.length ? Math.max(...gaps) : null;
}

async function oneUpdate(n: number, mode: E2eUpdate['mode'], intent: E2eUpdate['intent'], o: Options, vmms: Vmms, qmp: string,
  devs: string[], ramKiB: bigint, expected: 'new-owner' | 'fallback'): Promise<E2eUpdate> {
  const u: E2eUpdate = {
    n, mode, intent, status: 'not run', path: null, rolled_back: false, downtime_ms: null, phases: null,
    vmpin_before: null, vmpin_after: null, vmpin_min: null, pins_acquired: 0, pins_released: 0,
    guest_gap_ms: null, fds: null, holders: {}, problems: [],
  };
  const old = vmms.current;
  const before = { pin: vmPinKiB(old.pid!), pins: pinCounters(), net: stats(vmms.out).net };
  u.vmpin_before = before.pin?.toString() ?? null;
  let next: ChildProcess | undefined;
  let incoming = '';
  if (mode === 'cpr-transfer') {
    incoming = join(o.work, `incoming-${n}.sock`);
    next = vmms.launch(['run', '--incoming', `cpr-transfer:${incoming}`, '--log-level', 'info'],
      intent === 'rollback' ? { ...process.env, MINIVMM_INJECT: 'new-process-crash' } : process.env);
    const end = Date.now() + 120_000;
    while (!existsSync(incoming)) {
      if (!vmms.alive(next)) { u.problems.push(`the incoming process exited (${next.exitCode ?? next.signalCode}) before listening`); return u; }
      if (Date.now() > end) { u.problems.push('the incoming process did not listen within 120 s'); return u; }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  if (intent === 'forced-fallback') {
    const r = await cli(['qmp', '--socket', qmp, 'migrate-set-parameters', '{"x-vdpa-path":"fallback"}']);
    if (r.status !== 0) { u.problems.push(`migrate-set-parameters x-vdpa-path fallback: ${(r.stderr || r.stdout).trim()}`); return u; }
  }
  // Sample VmPin of every VMM process while the update runs: the lowest value shows a re-pin.
  let min: bigint | null = null;
  const sampler = setInterval(() => {
    for (const c of [old, next]) {
      if (!c?.pid) continue;
      const v = vmPinKiB(c.pid);
      if (v !== null && (min === null || v < min)) min = v;
    }
  }, 10);
  const begin = vmms.out.length; // the guest's gaps from here on are this update's
  const res = await cli(['update', '--socket', qmp, '--mode', mode, ...(incoming ? ['--incoming', incoming] : []), '--json', '--timeout', '240']);
  clearInterval(sampler);
  let r: Record<string, unknown>;
  try { r = JSON.parse(res.stdout.trim().split('\n').pop() ?? ''); } catch {
    u.problems.push(`minivmm update gave no JSON (exit ${res.status}): ${(res.stderr || res.stdout).trim().split('\n').pop()}`);
    return u;
  }
  u.status = String(r.status);
  u.rolled_back = r['x-rolled-back'] === true;
  // query-migrate: QEMU's members (downtime in whole ms) and minivmm's x-cpr (path, phases, fractional ms).
  const cpr = r['x-cpr'] as { path?: string; downtime?: number; phases?: Record<string, number> } | undefined;
  u.path = cpr?.path ?? null;
  u.downtime_ms = typeof cpr?.downtime === 'number' ? cpr.downtime : typeof r.downtime === 'number' ? r.downtime : null;
  u.phases = cpr?.phases ?? null;
  if (intent === 'forced-fallback') {
    const back = await cli(['qmp', '--socket', qmp, 'migrate-set-parameters', '{"x-vdpa-path":"auto"}']);
    if (back.status !== 0) u.problems.push(`migrate-set-parameters x-vdpa-path auto: ${(back.stderr || back.stdout).trim()}`);
  }

  // Which process runs the guest now.
  if (intent === 'rollback') {
    if (!u.rolled_back) u.problems.push(`expected a rollback (the new process was made to crash), got status ${u.status}${r['error-desc'] ? `: ${r['error-desc']}` : ''}`);
    if (next && !await vmms.exited(next, 30_000)) u.problems.push('the crashed target is still running');
    if (!vmms.alive(old)) u.problems.push('the old process did not survive the rollback');
  } else if (intent === 'refused') {
    if (u.status !== 'failed' || u.rolled_back) u.problems.push(`expected the transfer to be refused (no VHOST_NEW_OWNER), got ${u.status}${u.rolled_back ? ' (rolled back)' : ''}`);
    if (next?.pid && vmms.alive(next)) next.kill('SIGTERM');
    if (next) await vmms.exited(next, 30_000);
  } else {
    if (u.status !== 'completed') { u.problems.push(`status ${u.status}: ${String(r['error-desc'] ?? '')}`); return u; }
    if (next) {
      vmms.current = next;
      if (!await vmms.exited(old, 60_000)) u.problems.push('the old process is still running after the transfer');
    }
    const want = intent === 'forced-fallback' ? 'fallback' : expected;
    if (u.path !== want) u.problems.push(`the VMM took the ${u.path} path; the kernel's features call for ${want}`);
  }

  // The guest runs again, by its own count. Frames the device delivered before the pause may still
  // be waiting in the RX ring (at most its RX buffers), so the count must pass a first line printed
  // after the update by more than those: only then has the device moved frames since.
  const mark = vmms.out.length;
  const rxBufs = Number(/^net ready .* rx=(\d+)/m.exec(vmms.out)?.[1] ?? 256);
  try {
    await vmms.waitOutput(mark, (t) => stats(t).net !== undefined && /^blk written=.*\n/m.test(t), 'traffic after the update (stats lines)');
    const r1 = stats(vmms.out.slice(mark)).net!.received;
    await vmms.waitOutput(mark, (t) => (stats(t).net?.received ?? 0) > r1 + rxBufs, `traffic after the update (more than ${rxBufs} frames past ${r1})`);
  } catch (e) { u.problems.push((e as Error).message); }
  const after = pinCounters();
  u.pins_acquired = after.acquired - before.pins.acquired;
  u.pins_released = after.released - before.pins.released;
  const pid = vmms.current.pid!;
  const pinAfter = vmPinKiB(pid);
  u.vmpin_after = pinAfter?.toString() ?? null;
  const seen = min as bigint | null;
  u.vmpin_min = seen === null ? null : (pinAfter !== null && pinAfter < seen ? pinAfter : seen).toString();
  u.fds = fdCount(pid);
  u.guest_gap_ms = windowGap(vmms.out.slice(begin));
  for (const d of devs) u.holders[d] = holders(d);
  for (const d of devs) {
    const h = u.holders[d];
    if (h.length !== 1 || h[0] !== pid) u.problems.push(`${d} is held open by ${h.length ? `pid ${h.join(', ')}` : 'no process'}, expected the VMM (pid ${pid}) alone`);
  }

  // Pinned memory, from the kernel (PA pins every page of guest RAM; VA pins nothing).
  for (const [what, v] of [['before', before.pin], ['after', pinAfter]] as const) {
    if (v !== null && vmPinUnderflowed(v)) u.problems.push(`VmPin ${what} reads ${v} kB = ${v - (1n << 64n)} kB: the kernel's pinned-page count went negative (kernel bug)`);
  }
  const rePinned = BigInt(u.pins_acquired) * 4n >= ramKiB;
  if (o.dma === 'pa') {
    if (before.pin === null || before.pin < ramKiB) u.problems.push(`VmPin before is ${before.pin} kB, less than the ${ramKiB} kB of guest RAM that PA mode pins`);
    if (pinAfter !== before.pin) u.problems.push(`VmPin changed across the update: ${before.pin} -> ${pinAfter} kB (the pinned-page accounting must follow the owner)`);
    const tookFallback = u.status === 'completed' && u.path === 'fallback';
    if (tookFallback && !rePinned) u.problems.push(`the fallback path re-pins guest RAM, but the kernel counted only ${u.pins_acquired} pages pinned`);
    if (!tookFallback && u.pins_acquired * 4 > Number(ramKiB) / 10) {
      u.problems.push(`${u.pins_acquired} pages pinned during a ${u.rolled_back ? 'rollback' : u.status === 'completed' ? 'new-owner update' : 'refused update'}: guest RAM was re-pinned`);
    }
  } else {
    if (before.pin !== 0n || pinAfter !== 0n) u.problems.push(`VmPin ${before.pin} -> ${pinAfter} kB in VA mode (nothing should be pinned)`);
  }
  // REMAP: the VMM's phase, checked against what the kernel advertises (bit 10 in VA mode only).
  const remapMs = u.phases?.remap ?? 0;
  if (u.status === 'completed' && u.path === 'new-owner' && o.dma === 'va' && !(remapMs > 0)) u.problems.push('new-owner in VA mode without a REMAP phase');
  if (u.status === 'completed' && o.dma === 'pa' && remapMs > 0) u.problems.push(`a REMAP phase (${remapMs} ms) in PA mode, where the kernel does not offer IOTLB_REMAP`);
  return u;
}

/** After the last update: the device state as the kernel shows it, and the VMM's fds. */
async function finalChecks(o: Options, vmms: Vmms, devs: string[], infos: DeviceInfo[], fail: (s: string) => void,
  vstatsAtStart: Record<string, Record<string, number>[]>): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const [i, d] of devs.entries()) {
    const name = vdpaName(d);
    if (!name || infos[i].kind !== 'net') continue; // vdpa_sim_blk has no vstats; the guest's verified blocks show its ring moving
    const q = [0, 1].map((qidx) => vstats(name, qidx));
    const bad = q.find((x) => !x.ok) as { error: string } | undefined;
    if (bad) { fail(`vdpa dev vstats show ${name}: ${bad.error} (EAGAIN means FEATURES_OK is not set)`); continue; }
    const first = q.map((x) => (x as { counters: Record<string, number> }).counters);
    // Read again once the device must have moved frames since: the guest's count lags the
    // device's by at most its RX buffers (delivered, not yet reaped), so once it has grown by more
    // than those past a line printed after the first read, the device has delivered new frames.
    const window = Number(/^net ready .* rx=(\d+)/m.exec(vmms.out)?.[1] ?? 256);
    const received = (t: string): number => [...t.matchAll(/^net sent=\d+ received=(\d+)/gm)].map((m) => Number(m[1])).pop() ?? -1;
    const mark = vmms.out.length;
    await vmms.waitOutput(mark, (t) => received(t) >= 0, 'a stats line after reading vstats');
    const g1 = received(vmms.out.slice(mark));
    await vmms.waitOutput(mark, (t) => received(t) > g1 + window, `the guest receiving more than ${window} frames after reading vstats`);
    const second = [0, 1].map((qidx) => vstats(name, qidx)).map((x) => (x.ok ? x.counters : {}));
    const moved = first.map((c, k) => Object.keys(c).some((key) => (second[k][key] ?? 0) > c[key]));
    out[name] = { rx: { first: first[0], then: second[0] }, tx: { first: first[1], then: second[1] } };
    // Errors and drops the device counted while minivmm drove it (from its first traffic on).
    const base = vstatsAtStart[name];
    if (base) {
      const grew = [0, 1].flatMap((k) => Object.keys(second[k]).filter((key) => /error|drop|overrun/.test(key) && second[k][key] > (base[k][key] ?? 0))
        .map((key) => `${key} ${base[k][key]} -> ${second[k][key]}`));
      if (grew.length) fail(`vdpa dev vstats ${name}: the device counted errors while minivmm drove it: ${grew.join(', ')}`);
    }
    if (!moved.every(Boolean)) fail(`vdpa dev vstats ${name}: queue counters did not move after the last update (rx ${JSON.stringify(first[0])} -> ${JSON.stringify(second[0])}, tx ${JSON.stringify(first[1])} -> ${JSON.stringify(second[1])}); vdpa_sim serves rings only with DRIVER_OK`);
    else process.stdout.write(`e2e ${o.dma}: ${name} (kernel vstats): rx ${JSON.stringify(second[0])}, tx ${JSON.stringify(second[1])}: rings moving, so FEATURES_OK and DRIVER_OK\n`);
  }
  return out;
}

const isEntry = (() => { try { return realpathSync(process.argv[1] ?? '') === realpathSync(fileURLToPath(import.meta.url)); } catch { return false; } })();
if (isEntry) {
  let o: Options;
  try { o = parseOptions(process.argv.slice(2)); } catch (e) {
    process.stderr.write(`e2e: ${(e as Error).message}\nusage: node dist/tools/kernel/e2e.js --net DEV --blk DEV --dma va|pa [--memory 256M] [--json FILE] [--work DIR]\n`);
    process.exit(2);
  }
  runE2e(o).then((r) => process.exit(r.verdict === 'pass' ? 0 : 1), (e) => { console.error(`e2e ${o.dma}: FAIL: ${(e as Error).stack ?? e}`); process.exit(1); });
}
