// `npm run soak`: many live updates in a row, alternating cpr-exec and cpr-transfer, under netblk
// traffic on a va net device and a pa blk device. Checks and reports: no lost/duplicated/corrupt
// frame, no block mismatch, flat fd count and RSS in the VMM and in the device daemon.
//   npm run soak -- [--updates 1000] [--memory 1G]
import { parseArgs } from 'node:util';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runUpdate } from '../vmm/update.js';
import { QmpConnection } from '../vmm/qmp.js';
import { parseStats } from './stats.js';
import { median, quantile } from './stats.js';
import { copyBuild } from './build-copy.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { updates: { type: 'string', default: '1000' }, memory: { type: 'string', default: '1G' } } });
  const total = Number(values.updates);
  const dir = mkdtempSync(join(tmpdir(), 'minivmm-soak-'));
  // Every update starts a new image: from a private copy, so a rebuild of dist/ meanwhile cannot break one.
  const build = copyBuild(ROOT, join(dir, 'build'));
  const qmp = join(dir, 'qmp.sock');
  const args = [build.bin, 'run', '--guest', 'netblk', '--memory', values.memory as string, '--qmp', qmp, '--log-level', 'warn', '--vdpa', 'sim:net', '--vdpa', 'sim:blk,pa'];
  let out = '', err = '';
  const procs: ChildProcess[] = [];
  const launch = (extra: string[]) => {
    const c = spawn(process.execPath, [...args, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.on('data', (d) => { out += d; });
    c.stderr!.on('data', (d) => { err += d; });
    procs.push(c);
    return c;
  };
  let current = launch([]);
  const waitMore = async (mark: number) => {
    const before = parseStats(out.slice(0, mark));
    const end = Date.now() + 30_000;
    for (;;) {
      const s = parseStats(out);
      if (out.length > mark && s.net && s.blk && (!before.net || s.net.received > before.net.received) && (!before.blk || s.blk.verified > before.blk.verified)) return;
      if (Date.now() > end) throw new Error(`traffic stopped: ${err.trim().split('\n').pop()}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  try {
    await waitMore(0);
    const c = await QmpConnection.connect(qmp);
    const daemon = ((await c.execute('x-query-vdpa')) as { daemon: { pid: number } }).daemon;
    c.close();
    const samples: { n: number; vmmFds: number; vmmRss: number; daemonFds: number; daemonRss: number }[] = [];
    const blackouts: Record<string, number[]> = { 'cpr-exec': [], 'cpr-transfer': [] };
    for (let n = 1; n <= total; n++) {
      const mark = out.length;
      const mode = n % 2 ? 'cpr-exec' : 'cpr-transfer';
      let r: Record<string, unknown>;
      if (mode === 'cpr-transfer') {
        const sock = join(dir, `in-${n}.sock`);
        const next = launch(['--incoming', `cpr-transfer:${sock}`]);
        while (!existsSync(sock)) { if (next.exitCode !== null) throw new Error('incoming process died'); await new Promise((res) => setTimeout(res, 5)); }
        r = await runUpdate(qmp, null, 30_000, { mode, uri: `unix:${sock}` });
        if (r.status === 'completed') current = next;
      } else {
        r = await runUpdate(qmp, null, 30_000);
      }
      if (r.status !== 'completed') throw new Error(`update ${n} (${mode}) failed: ${r['error-desc']}`);
      const blackout = (r['x-cpr'] as { downtime: number }).downtime;
      blackouts[mode].push(blackout);
      await waitMore(mark);
      if (n % 50 === 0 || n === 2) {
        await new Promise((res) => setTimeout(res, 200));
        samples.push({ n, vmmFds: fds(current.pid!), vmmRss: rssKiB(current.pid!), daemonFds: fds(daemon.pid), daemonRss: rssKiB(daemon.pid) });
      }
      const s = parseStats(out);
      process.stderr.write(`\r\x1b[Kupdate ${n}/${total} ${mode} ${blackout.toFixed(1)} ms; frames ${s.net?.received}, lost ${s.net?.lost}, blocks verified ${s.blk?.verified}`);
    }
    process.stderr.write('\n');
    const s = parseStats(out);
    const first = samples[0], last = samples[samples.length - 1];
    const report = {
      updates: total,
      blackout_ms: Object.fromEntries(Object.entries(blackouts).map(([k, v]) => [k, { median: median(v), p90: quantile(v, 0.9), max: Math.max(...v) }])),
      net: s.net, blk: s.blk, samples,
      verdict: {
        no_loss: s.net!.lost === 0 && s.net!.duplicated === 0 && s.net!.corrupt === 0,
        no_mismatch: s.blk!.mismatches === 0 && !/MISMATCH|IOERR/.test(out),
        vmm_fds_flat: first.vmmFds === last.vmmFds,
        daemon_fds_flat: first.daemonFds === last.daemonFds,
        // RSS may wander with the GC; "flat" = less than 20% growth from update 2 to the last.
        vmm_rss_flat: last.vmmRss < first.vmmRss * 1.2,
        daemon_rss_flat: last.daemonRss < first.daemonRss * 1.2,
      },
    };
    console.log(JSON.stringify(report, null, 2));
    const ok = Object.values(report.verdict).every(Boolean);
    console.log(ok ? 'soak passed' : 'soak FAILED');
    process.exitCode = ok ? 0 : 1;
    const q = await QmpConnection.connect(qmp);
    await q.execute('quit').catch(() => undefined);
    q.close();
  } finally {
    await new Promise((r) => setTimeout(r, 500));
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => { process.stderr.write(`\nsoak: ${(e as Error).message}\n`); process.exit(1); });
