// The README's Security section, claim by claim. The embedded device's owner checks are the
// conformance cases asserted in test/vdpa-sim.test.ts; the rest is here. Other users are played
// by node children that load the build's libc as root and then drop to nobody (65534).
import { afterEach, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeWith } from './facility.js';
import { BIN, BUILD, MovingVm, VmProcess, tempDir, waitUntil, within } from './harness.js';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, O_CLOEXEC } from '../src/libc.js';
import { transferPeerRefusal } from '../cpr/transfer.js';
import { runUpdate } from '../vmm/update.js';
import { QmpConnection } from '../vmm/qmp.js';

const NOBODY = 65534;
const LIBC = join(BUILD, 'dist/src/libc.js');

/** A node child that imports the build's libc as `L` while root, drops to nobody, then runs `body`. */
function asNobody(body: string): { child: ChildProcess; lines: string[]; line(re: RegExp): Promise<string> } {
  const script = `import * as L from ${JSON.stringify(LIBC)};
process.setgroups([]); process.setgid(${NOBODY}); process.setuid(${NOBODY});
${body}`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let err = '';
  child.stdout!.on('data', (d) => { lines.push(...String(d).split('\n').filter(Boolean)); });
  child.stderr!.on('data', (d) => { err += d; });
  const line = async (re: RegExp) => {
    await waitUntil(() => lines.some((l) => re.test(l)) || child.exitCode !== null, 20_000, `a line matching ${re} from the child`);
    const l = lines.find((x) => re.test(x));
    if (!l) throw new Error(`the child exited ${child.exitCode} without ${re}: ${err.slice(-400)}`);
    return l;
  };
  children.push(child);
  return { child, lines, line };
}
const children: ChildProcess[] = [];
let vm: MovingVm | VmProcess | undefined;
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) { c.kill('SIGKILL'); await new Promise((r) => c.once('close', r)); }
  if (vm instanceof MovingVm) await vm.killAll(); else await vm?.kill();
  vm = undefined;
});

/** `fd -> target` for every fd above 2 of `pid` without FD_CLOEXEC: what an exec'd program would inherit. */
function inheritableFds(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`).map(Number).filter((fd) => fd > 2).flatMap((fd) => {
    try {
      const flags = parseInt(/^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1], 8);
      return flags & O_CLOEXEC ? [] : [`${fd} -> ${readlinkSync(`/proc/${pid}/fd/${fd}`)}`];
    } catch { return []; } // closed meanwhile
  });
}

/** A scratch directory other users can traverse (so a refusal comes from the socket's own mode). */
function openDir(): string {
  const d = tempDir('minivmm-sec-');
  chmodSync(d, 0o755);
  return d;
}

it('the transfer peer rules: own uid or root, not this process, a visible pid', () => {
  const self = { pid: 1000, uid: 0 };
  expect(transferPeerRefusal({ pid: 2000, uid: 0, gid: 0 }, self)).toBeNull();
  expect(transferPeerRefusal({ pid: 2000, uid: 0, gid: 0 }, { pid: 1000, uid: 1001 })).toBeNull(); // root may receive
  expect(transferPeerRefusal({ pid: 2000, uid: 1001, gid: 1001 }, { pid: 1000, uid: 1001 })).toBeNull();
  expect(transferPeerRefusal({ pid: 2000, uid: 65534, gid: 65534 }, self)).toMatch(/runs as uid 65534, not as uid 0 or root/);
  expect(transferPeerRefusal({ pid: 1000, uid: 0, gid: 0 }, self)).toMatch(/this process's own/);
  expect(transferPeerRefusal({ pid: 0, uid: 0, gid: 0 }, self)).toMatch(/outside this pid namespace/);
});

describeWith(['guest', 'fuse', 'root'], 'security claims', () => {
  it('cpr-transfer refuses a peer of another user: a clear query-migrate error, no fd sent, the guest keeps running', async () => {
    const dir = openDir();
    const peerDir = join(dir, 'peer');
    mkdirSync(peerDir);
    chownSync(peerDir, NOBODY, NOBODY);
    const sock = join(peerDir, 'transfer.sock');
    // A fake target: listens (as nobody) where the VMM will connect, and reports what it receives.
    const peer = asNobody(`
      const s = L.socket(L.SOCK_SEQPACKET);
      L.bind(s, ${JSON.stringify(sock)}); L.listen(s, 1);
      console.log('listening uid=' + process.getuid());
      const c = await L.acceptAsync(s);
      L.setRecvTimeout(c, 20000);
      let messages = 0, bytes = 0, fds = 0;
      for (;;) { const m = await L.recvWithFds(c, 65536, 253); if (!m.data.length && !m.fds.length) break; messages++; bytes += m.data.length; fds += m.fds.length; }
      console.log(JSON.stringify({ messages, bytes, fds }));`);
    expect(await peer.line(/^listening/)).toBe(`listening uid=${NOBODY}`);
    const v = vm = new MovingVm(['--guest', 'netloop', '--memory', '256M', '--log-level', 'warn', '--vdpa', 'sim:net'], dir);
    await v.waitFor(/^net sent=.*\n/m, 60_000);
    const old = v.current;
    const r = await runUpdate(v.qmpPath, null, 30_000, { mode: 'cpr-transfer', uri: `unix:${sock}` });
    expect(r.status).toBe('failed');
    expect(r['error-desc']).toBe(`cpr-transfer to ${sock} refused before sending anything: the process listening there (pid ${peer.child.pid}) runs as uid ${NOBODY}, not as uid 0 or root`);
    expect(r['x-rolled-back']).toBeUndefined(); // the guest never paused
    // The peer saw the connection close with nothing on it, and was not killed.
    expect(JSON.parse(await peer.line(/^\{/))).toEqual({ messages: 0, bytes: 0, fds: 0 });
    expect(await within(new Promise((res) => (peer.child.exitCode !== null ? res(peer.child.exitCode) : peer.child.once('close', res))), 10_000, 'the fake peer exits')).toBe(0);
    // The guest runs on in the same process, and a real transfer still works.
    const mark = v.out.length;
    await v.waitFor(/^net sent=\d+ received=\d+/m, 20_000, mark);
    expect(old.exitCode).toBeNull();
    const next = await v.prepareIncoming();
    const ok = await runUpdate(v.qmpPath, null, 30_000, { mode: 'cpr-transfer', uri: `unix:${next.sock}` });
    expect(ok.status, String(ok['error-desc'])).toBe('completed');
    v.current = next.child;
  }, 120_000);

  it('the QMP and transfer sockets are 0600 from the start: another user never connects', async () => {
    const dir = openDir();
    const qmp = join(dir, 'qmp.sock'), incoming = join(dir, 'incoming-1.sock');
    // Tries to connect to both paths, as nobody, from before they exist until it has met both in place.
    const hammer = asNobody(`
      const targets = [[${JSON.stringify(qmp)}, L.SOCK_STREAM], [${JSON.stringify(incoming)}, L.SOCK_SEQPACKET]];
      const seen = targets.map(() => ({}));
      console.log('ready');
      for (let i = 0; !seen.every((s) => s.EACCES >= 20); i++) {
        targets.forEach(([p, type], k) => {
          const fd = L.socket(type);
          let what = 'connected';
          try { L.connect(fd, p); } catch (e) { what = e.code; }
          L.close(fd);
          seen[k][what] = (seen[k][what] ?? 0) + 1;
        });
        if (i % 20 === 0) await new Promise((r) => setTimeout(r, 1));
      }
      console.log(JSON.stringify(seen));`);
    await hammer.line(/^ready$/);
    const v = vm = new MovingVm(['--guest', 'counter', '--log-level', 'warn'], dir);
    await v.waitFor(/^counter \d+/m, 30_000);
    await v.prepareIncoming();
    expect(statSync(qmp).mode & 0o777).toBe(0o600);
    expect(statSync(incoming).mode & 0o777).toBe(0o600);
    const [onQmp, onIncoming] = JSON.parse(await hammer.line(/^\[/)) as Record<string, number>[];
    expect(onQmp.connected, JSON.stringify(onQmp)).toBeUndefined();
    expect(onIncoming.connected, JSON.stringify(onIncoming)).toBeUndefined();
    expect(onQmp.EACCES).toBeGreaterThanOrEqual(20);
    expect(onIncoming.EACCES).toBeGreaterThanOrEqual(20);
  }, 120_000);

  it('the state memfd the new image receives is sealed against writing, shrinking and growing', async () => {
    const dir = tempDir('minivmm-sec-');
    const out = join(dir, 'seals.json');
    const check = join(dir, 'check.mjs');
    writeFileSync(check, `import * as L from ${JSON.stringify(LIBC)};
      const fd = Number(process.env.MINIVMM_CPR_STATE.split(',')[0]); // the hand-off is "<fd>,<saved>,<sent>,<keeper>"
      let write = 'OK'; try { L.write('write', fd, Buffer.from('x')); } catch (e) { write = e.code; }
      let truncate = 'OK'; try { L.ftruncate(fd, 0); } catch (e) { truncate = e.code; }
      console.log(JSON.stringify({ seals: L.fcntl(fd, L.F_GET_SEALS), write, truncate }));\n`);
    const args = ['--guest', 'counter', '--log-level', 'warn'];
    const v = vm = await VmProcess.start(args, dir);
    await v.waitFor(/counter \d+/);
    // The exec command looks at the state fd it inherits, then execs the real new image.
    const wrapper = `${JSON.stringify(process.execPath)} ${JSON.stringify(check)} > ${JSON.stringify(out)}; exec "$0" "$@"`;
    const r = await runUpdate(v.qmpPath, ['/bin/sh', '-c', wrapper, process.execPath, BIN, 'run', ...args, '--qmp', v.qmpPath], 30_000);
    expect(r.status, String(r['error-desc'])).toBe('completed');
    expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual({ seals: F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE, write: 'EPERM', truncate: 'EPERM' });
    await v.waitFor(/counter \d+/, 15_000, v.stdout.length);
  }, 120_000);

  it('every fd of the VMM is close-on-exec, before and after its own exec (vdpa fds included)', async () => {
    const v = vm = await VmProcess.start(['--guest', 'netloop', '--memory', '256M', '--log-level', 'warn', '--vdpa', 'sim:net']);
    await v.waitFor(/^net sent=.*\n/m, 60_000);
    // What this test process would pass to any child (inherited from whoever started vitest) is
    // not the VMM's doing: only fds it opened itself count.
    const fromUs = new Set(inheritableFds(process.pid));
    const inheritable = () => inheritableFds(v.pid).filter((f) => !fromUs.has(f));
    const c = await QmpConnection.connect(v.qmpPath);
    const devices = (await c.execute('x-query-vdpa') as { devices: unknown[] }).devices;
    c.close();
    expect(devices).toHaveLength(1);
    expect(inheritable()).toEqual([]);
    const r = await runUpdate(v.qmpPath, null, 30_000);
    expect(r.status, String(r['error-desc'])).toBe('completed');
    expect((r as { 'x-cpr': { devices: { path: string }[] } })['x-cpr'].devices.map((d) => d.path)).toEqual(['new-owner']); // the vdpa fd crossed the exec
    await v.waitFor(/^net sent=.*\n/m, 20_000, v.stdout.length);
    expect(inheritable()).toEqual([]);
  }, 120_000);
});
