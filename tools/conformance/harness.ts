// Case context: the roles a case can start, expectations that stop the case at the first mismatch,
// and the clean-up that returns the device to "closed, nobody holds it" after every case.
import type { AgentConfig, Op, Outcome } from './agent.js';
import { ChildPeer, LocalPeer, Peer, ThreadPeer } from './peers.js';
import type { DeviceInfo } from './probe.js';
import { iotlbName } from '../../src/vhost.js';

export type Tag = 'U' | 'U0' | 'P' | 'P+R' | 'VA' | 'PA' | 'SIM' | 'Q';
export interface Case {
  id: number;
  title: string;
  tags: Tag[];
  /** Replaces the tag-based applicability test: a one-line reason to skip, or null. */
  gate?: (d: DeviceInfo) => string | null;
  /** Extra applicability test: a one-line reason to skip, or null. */
  needs?: (d: DeviceInfo) => string | null;
  /** Runs the case; returns the detail printed after "ok". */
  run: (c: Ctx) => Promise<string | void>;
}
export class Skip extends Error {}
export class Fail extends Error {}

const fmt = (x: unknown): string => (typeof x === 'bigint' ? `0x${x.toString(16)}` : typeof x === 'object' && x !== null ? JSON.stringify(x, (_k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v)) : String(x));
/** A short readable name of an op for messages, e.g. "SET_VRING_NUM(0,256)" or "UPDATE iova 0x40000000". */
export function label(op: Op): string {
  const [name, ...args] = op;
  if (name === 'v') return `${String(args[0])}(${args.slice(1).map(fmt).join(',')})`;
  if (name === 'iotlb') {
    const m = args[0] as { type: number; iova: bigint; size: bigint; asid?: number; perm?: number; framing?: number };
    return `${iotlbName(m.type)}${m.framing === 1 ? ' (V1)' : ''} iova ${fmt(m.iova)} size ${fmt(m.size)}${m.asid ? ` asid ${m.asid}` : ''}`;
  }
  if (name === 'ioctl') return `ioctl 0x${(args[0] as number).toString(16)}`;
  return `${name}(${args.map(fmt).join(',')})`;
}

/** Ops are passed spread (c.ok(p, 'open')) or built (c.ok(p, V('setOwner'))). */
const norm = (a: Op | [Op]): Op => (Array.isArray(a[0]) ? (a[0] as Op) : (a as Op));

export class Ctx {
  private peers: Peer[] = [];
  constructor(readonly dev: DeviceInfo, readonly cfg: AgentConfig) {}

  /** Role A with the device opened (an EBUSY left by the previous case's asynchronous release is waited out). */
  async a(role = 'A'): Promise<LocalPeer> {
    const p = this.local(role);
    await this.ok(p, 'openSettled');
    return p;
  }
  /** Role A without an open device. */
  local(role = 'A'): LocalPeer { const p = new LocalPeer(role, this.cfg); this.peers.push(p); return p; }
  /** Role T: a worker thread of this process using A's fd. */
  async thread(of: LocalPeer): Promise<Peer> { const p = await ThreadPeer.start('T', this.cfg, of.agent.fd!); this.peers.push(p); return p; }
  /** Role B: a child process; with `of`, it inherits of's device fd (as fd 3). */
  async child(role = 'B', of?: LocalPeer): Promise<ChildPeer> {
    const p = await ChildPeer.start(role, this.cfg, of ? of.agent.fd! : undefined);
    this.peers.unshift(p); // children go first at clean-up, so their copies close before A's
    return p;
  }

  /** Run op and require the outcome `want` ('ok' or an errno name); returns the op's value. */
  async expect(p: Peer, want: string, ...args: Op | [Op]): Promise<any> {
    const op = norm(args);
    const out: Outcome = await p.call(...op);
    if (out.r === 'EHARNESS') throw new Error(`${p.role} ${label(op)}: harness error: ${String(out.v)}`);
    if (out.r !== want) throw new Fail(`${p.role} ${label(op)}: expected ${want}, got ${out.r}`);
    if (want === 'ok' && (op[0] === 'iotlb' || op[0] === 'writeRaw') && out.v !== 72) throw new Fail(`${p.role} ${label(op)}: write returned ${String(out.v)}, not 72`);
    return out.v;
  }
  ok(p: Peer, ...op: Op | [Op]): Promise<any> { return this.expect(p, 'ok', ...norm(op)); }
  /** Run op and return its outcome name without judging it. */
  async outcome(p: Peer, ...args: Op | [Op]): Promise<string> {
    const op = norm(args);
    const out = await p.call(...op);
    if (out.r === 'EHARNESS') throw new Error(`${p.role} ${label(op)}: harness error: ${String(out.v)}`);
    return out.r;
  }
  check(cond: boolean, msg: string): void { if (!cond) throw new Fail(msg); }
  skip(reason: string): never { throw new Skip(reason); }

  async dispose(): Promise<void> {
    for (const p of this.peers) { try { await p.dispose(); } catch { /* best effort */ } }
    this.peers = [];
  }
}
