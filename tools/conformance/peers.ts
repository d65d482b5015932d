// The roles of docs/vhost-vdpa-live-update.md §7.1 as peers that run Agent ops: A (this process), T (a worker thread of A),
// B (a child process that inherits A's fd, or opens the node itself) and A' (a child that exec'd
// itself with the fd kept; the same peer object keeps talking to the new image).
import { spawn, ChildProcess } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { createInterface } from 'node:readline';
import { Agent, AgentConfig, ExecState, Op, Outcome, dec, enc } from './agent.js';

const OP_TIMEOUT_MS = 60_000;

export interface Peer {
  role: string;
  call(...op: Op): Promise<Outcome>;
  dispose(): Promise<void>;
}

/** Role A: the runner's own process. */
export class LocalPeer implements Peer {
  readonly agent: Agent;
  constructor(public role: string, cfg: AgentConfig) { this.agent = new Agent(cfg); }
  async call(...op: Op): Promise<Outcome> { return this.agent.run(op); }
  async dispose(): Promise<void> { this.agent.run(['releaseAll']); }
}

/** Role T: a worker thread sharing A's fd (same address space, so the same owner). */
export class ThreadPeer implements Peer {
  private next = 1;
  private waiting = new Map<number, (o: Outcome) => void>();
  private constructor(public role: string, private w: Worker) {
    w.on('message', (m: string) => { const { id, out } = dec(m); this.waiting.get(id)?.(out); this.waiting.delete(id); });
    w.on('error', (e) => { for (const f of this.waiting.values()) f({ r: 'EHARNESS', v: String(e) }); this.waiting.clear(); });
  }
  static async start(role: string, cfg: AgentConfig, fd: number): Promise<ThreadPeer> {
    const w = new Worker(new URL('./thread.js', import.meta.url), { workerData: enc({ cfg, fd }) });
    const p = new ThreadPeer(role, w);
    const ready = await p.call('pid');
    if (ready.r !== 'ok') throw new Error(`thread ${role} did not start: ${String(ready.v)}`);
    return p;
  }
  call(...op: Op): Promise<Outcome> {
    const id = this.next++;
    return new Promise((res) => {
      const t = setTimeout(() => { this.waiting.delete(id); res({ r: 'EHARNESS', v: `thread ${this.role}: no answer in ${OP_TIMEOUT_MS} ms` }); }, OP_TIMEOUT_MS);
      this.waiting.set(id, (o) => { clearTimeout(t); res(o); });
      this.w.postMessage(enc({ id, op }));
    });
  }
  async dispose(): Promise<void> { await this.w.terminate(); }
}

/** Roles B and A': a child process running the suite's entry as a peer. */
export class ChildPeer implements Peer {
  private next = 1;
  private waiting = new Map<number, (o: Outcome) => void>();
  private stderr = '';
  private exited: Promise<void>;
  pid = 0;
  private constructor(public role: string, private cp: ChildProcess) {
    createInterface({ input: cp.stdout! }).on('line', (line) => {
      let m: { id: number; out: Outcome };
      try { m = dec(line); } catch { this.stderr += `${line}\n`; return; }
      this.waiting.get(m.id)?.(m.out); this.waiting.delete(m.id);
    });
    cp.stderr!.on('data', (d) => { this.stderr = (this.stderr + d).slice(-4000); });
    this.exited = new Promise((res) => cp.on('exit', (code, sig) => {
      for (const f of this.waiting.values()) f({ r: 'EHARNESS', v: `peer ${role} exited (${code ?? sig}): ${this.stderr.trim()}` });
      this.waiting.clear();
      res();
    }));
  }
  /** Start a child; `fd` (of this process) becomes the child's fd 3 and its device fd. */
  static async start(role: string, cfg: AgentConfig, fd?: number): Promise<ChildPeer> {
    const stdio: ('pipe' | number)[] = ['pipe', 'pipe', 'pipe'];
    if (fd !== undefined) stdio.push(fd);
    const cp = spawn(process.execPath, [cfg.entry], {
      stdio, env: { ...process.env, MINIVMM_CONF_ROLE: 'peer', MINIVMM_CONF_CFG: enc(cfg), MINIVMM_CONF_INHERIT: fd === undefined ? '' : '3' },
    });
    const p = new ChildPeer(role, cp);
    const ready = await p.wait(0);
    if (ready.r !== 'ok') throw new Error(`peer ${role} did not start: ${String(ready.v)}`);
    p.pid = (ready.v as { pid: number }).pid;
    return p;
  }
  /** An answer, or EHARNESS after OP_TIMEOUT_MS (the child is then killed: a hung device must not hang the suite). */
  private wait(id: number): Promise<Outcome> {
    return new Promise((res) => {
      const t = setTimeout(() => {
        this.waiting.delete(id);
        this.cp.kill('SIGKILL');
        res({ r: 'EHARNESS', v: `peer ${this.role}: no answer in ${OP_TIMEOUT_MS} ms (killed)` });
      }, OP_TIMEOUT_MS);
      this.waiting.set(id, (o) => { clearTimeout(t); res(o); });
    });
  }
  call(...op: Op): Promise<Outcome> {
    const id = this.next++;
    const p = this.wait(id);
    this.cp.stdin!.write(`${enc({ id, op })}\n`);
    return p;
  }
  async dispose(): Promise<void> {
    if (this.cp.exitCode === null && this.cp.signalCode === null) {
      this.cp.stdin!.end();
      const t = setTimeout(() => this.cp.kill('SIGKILL'), 2000);
      await this.exited;
      clearTimeout(t);
    }
  }
}

/** The child side: serve ops on stdin/stdout; after an exec, answer the pending exec request. */
export function servePeer(): void {
  const cfg = process.env.MINIVMM_CONF_STATE ? (dec(process.env.MINIVMM_CONF_STATE) as ExecState) : null;
  const agent = cfg ? new Agent(cfg.cfg, cfg) : new Agent(dec(process.env.MINIVMM_CONF_CFG!) as AgentConfig);
  delete process.env.MINIVMM_CONF_STATE;
  const inherit = process.env.MINIVMM_CONF_INHERIT;
  if (!cfg && inherit) agent.fd = Number(inherit);
  const reply = (id: number, out: Outcome) => { process.stdout.write(`${enc({ id, out })}\n`); };
  reply(cfg ? cfg.reqId : 0, { r: 'ok', v: { pid: process.pid, execd: !!cfg } });
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const { id, op } = dec(line) as { id: number; op: Op };
    if (op[0] === 'exec') op[1] = { ...(op[1] as object ?? {}), reqId: id };
    reply(id, agent.run(op));
  });
  rl.on('close', () => { agent.run(['releaseAll']); process.exit(0); });
}
