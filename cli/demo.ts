// `minivmm demo` (what `npm start` runs): a guest driving the embedded vdpa devices, live-updated a
// few times under traffic, then a table of blackouts and of what the guest saw.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpConnection } from '../vmm/qmp.js';
import { runUpdate } from '../vmm/update.js';
import { parseVdpaSpec } from '../vmm/vdpa.js';
import { parseStats, type NetStats, type BlkStats } from '../tools/stats.js';

const BIN = fileURLToPath(new URL('../../bin/minivmm.js', import.meta.url));

export interface DemoOptions {
  updates: number; memory: string; vdpa: string[]; json: boolean; intervalMs: number; extraArgs?: string[];
  mode?: 'cpr-exec' | 'cpr-transfer';
  /** Fault injection for the first update: `new-process-crash` (cpr-transfer: the new process dies before acknowledging). */
  inject?: string;
}

function guestFor(vdpa: string[]): string {
  const types = new Set(vdpa.map((v) => { const s = parseVdpaSpec(v); return s.kind === 'sim' ? s.type : 'other'; }));
  if (types.has('net') && types.has('blk')) return 'netblk';
  if (types.has('net')) return 'netloop';
  if (types.has('blk')) return 'blkcheck';
  return 'counter';
}

export async function runDemo(o: DemoOptions): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), 'minivmm-demo-'));
  const qmp = join(dir, 'qmp.sock');
  const guest = guestFor(o.vdpa);
  const args = [BIN, 'run', '--guest', guest, '--memory', o.memory, '--qmp', qmp, '--log-level', 'warn', ...o.vdpa.flatMap((v) => ['--vdpa', v]), ...(o.extraArgs ?? [])];
  const mode = o.mode ?? 'cpr-exec';
  let out = '', err = '';
  // With cpr-transfer the guest moves from process to process: collect all their output.
  const children: ChildProcess[] = [];
  const launch = (extra: string[], env: NodeJS.ProcessEnv = process.env) => {
    const c = spawn(process.execPath, [...args, ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env });
    c.stdout!.on('data', (d) => { out += d; });
    c.stderr!.on('data', (d) => { err += d; });
    children.push(c);
    return c;
  };
  let child: ChildProcess = launch([]);
  const exited = () => Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null ? null : new Promise((r) => c.once('close', r)))));
  const say = (s: string) => { if (!o.json) process.stdout.write(s); };
  const waitOutput = async (from: number, re: RegExp, ms: number) => {
    const end = Date.now() + ms;
    while (!re.test(out.slice(from))) {
      if (child.exitCode !== null && !children.some((c) => c !== child && c.exitCode === null)) throw new Error(`the VM exited (${child.exitCode}): ${err.trim().split('\n').pop() ?? ''}`);
      if (Date.now() > end) throw new Error(`no guest output matching ${re} within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  const progress = guest === 'counter' ? /^counter /m : /^(net sent|blk written)=.*\n/m;
  try {
    say(`minivmm demo: guest ${guest}, ${o.memory} RAM, devices ${o.vdpa.join(' ') || '(none)'}, ${o.updates} live updates by ${mode}${o.inject ? `, injecting ${o.inject} in update 1` : ''}\n`);
    await waitOutput(0, progress, 60_000);
    const updates: Record<string, unknown>[] = [];
    for (let n = 1; n <= o.updates; n++) {
      await new Promise((r) => setTimeout(r, o.intervalMs));
      let r: { status: string; 'x-rolled-back'?: boolean; 'error-desc'?: string; 'x-cpr': { path: string; downtime: number; phases: Record<string, number>; devices: unknown[] } };
      let next: ChildProcess | undefined;
      if (mode === 'cpr-transfer') {
        const sock = join(dir, `incoming-${n}.sock`);
        next = launch(['--incoming', `cpr-transfer:${sock}`], n === 1 && o.inject ? { ...process.env, MINIVMM_INJECT: o.inject } : process.env);
        const ready = Date.now() + 30_000;
        while (!existsSync(sock)) {
          if (next.exitCode !== null || Date.now() > ready) throw new Error(`the incoming process did not start: ${err.trim().split('\n').pop() ?? ''}`);
          await new Promise((res) => setTimeout(res, 10));
        }
        r = await runUpdate(qmp, null, 60_000, { mode: 'cpr-transfer', uri: `unix:${sock}` }) as typeof r;
      } else {
        r = await runUpdate(qmp, null, 60_000) as typeof r;
      }
      const rolledBack = r['x-rolled-back'] === true;
      if (r.status !== 'completed' && !rolledBack) throw new Error(`update ${n} failed: ${r['error-desc'] ?? 'unknown'}`);
      if (next && !rolledBack) child = next;
      const mark = out.length;
      await waitOutput(mark, progress, 30_000); // traffic goes on
      updates.push(rolledBack
        ? { n, mode, rolled_back: true, error: r['error-desc'], ...parseStats(out) }
        : { n, mode, path: r['x-cpr'].path, rolled_back: false, downtime_ms: r['x-cpr'].downtime, phases: r['x-cpr'].phases, devices: r['x-cpr'].devices, ...parseStats(out) });
      say(rolledBack ? `  update ${n}: rolled back (${r['error-desc']})\n` : `  update ${n}: ${r['x-cpr'].path}, blackout ${r['x-cpr'].downtime.toFixed(1)} ms\n`);
    }
    // One more stats period after the last update, so its effect on traffic is counted.
    const mark = out.length;
    await waitOutput(mark, progress, 30_000);
    const final = parseStats(out);
    const c = await QmpConnection.connect(qmp);
    await c.execute('quit').catch(() => undefined);
    c.close();
    await exited();
    const result = { mode, memory: o.memory, guest, updates: updates.map(({ net: _n, blk: _b, ...u }) => u), ...final };
    if (!o.json) printTable(updates, final);
    return result;
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    await exited();
    rmSync(dir, { recursive: true, force: true });
  }
}

function printTable(updates: Record<string, unknown>[], final: ReturnType<typeof parseStats>): void {
  const cols = ['pause', 'save', updates.some((u) => u.mode === 'cpr-transfer') ? 'transfer' : 'exec', 'restore', 'resume', 'new_owner', 'remap'];
  const pad = (s: unknown, w: number) => String(s).padStart(w);
  console.log(`\n${'#'.padStart(2)} ${'path'.padEnd(9)} ${pad('blackout', 9)} ${cols.map((c) => pad(c, 10)).join('')}   lost dup corrupt  blocks-verified`);
  for (const u of updates) {
    if (u.rolled_back) { console.log(`${pad(u.n, 2)} rolled back: ${u.error}`); continue; }
    const p = u.phases as Record<string, number>, net = u.net as NetStats | undefined, blk = u.blk as BlkStats | undefined;
    console.log(`${pad(u.n, 2)} ${String(u.path).padEnd(9)} ${pad((u.downtime_ms as number).toFixed(1), 9)} ${cols.map((c) => pad(p[c] ?? '-', 10)).join('')}   ${pad(net?.lost ?? '-', 4)} ${pad(net?.duplicated ?? '-', 3)} ${pad(net?.corrupt ?? '-', 7)}  ${pad(blk?.verified ?? '-', 15)}`);
  }
  const d = updates.filter((u) => !u.rolled_back).map((u) => u.downtime_ms as number).sort((a, b) => a - b);
  console.log(`\nmedian blackout ${d[Math.floor((d.length - 1) / 2)]?.toFixed(1)} ms (phases in ms; the guest's frames and blocks are cumulative)`);
  if (final.net) console.log(`net: sent ${final.net.sent}, received ${final.net.received}, lost ${final.net.lost}, duplicated ${final.net.duplicated}, corrupt ${final.net.corrupt}, longest gap ${final.net.max_gap_ms} ms`);
  if (final.blk) console.log(`blk: written ${final.blk.written}, verified ${final.blk.verified}, mismatches ${final.blk.mismatches}`);
}
