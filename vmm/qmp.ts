// QMP monitor on a UNIX socket, speaking QEMU's protocol: greeting, capabilities negotiation,
// {"execute": ...} commands with {"return": ...} or {"error": {"class", "desc"}} replies, and events.
// The listening socket is one of the fds kept across exec, so clients reconnect to the same path.
import net from 'node:net';
import { chmodSync, unlinkSync, existsSync, lstatSync } from 'node:fs';
import { socket, bind, listen, close, SOCK_STREAM } from '../src/libc.js';

export class QmpError extends Error {
  constructor(message: string, readonly cls = 'GenericError') { super(message); }
}

export type QmpHandler = (args: Record<string, unknown>, client: QmpClient) => unknown | Promise<unknown>;

/** Longest accepted command line; longer input gets an error and the connection is closed. */
const MAX_LINE = 1 << 20;
/** Deepest accepted JSON nesting (QEMU's json-parser limit). */
const MAX_NESTING = 1024;

/** Nesting depth of a parsed JSON value, without recursion (the input may be 100k levels deep). */
function nestingDepth(root: unknown): number {
  let max = 0;
  const stack: [unknown, number][] = [[root, 1]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (d > max) max = d;
    if (max > MAX_NESTING) return max;
    for (const x of Object.values(v as object)) stack.push([x, d + 1]);
  }
  return max;
}

export interface QmpClient { socket: net.Socket; negotiated: boolean; send(msg: unknown, cb?: () => void): void }

export class QmpServer {
  private server: net.Server;
  private clients = new Set<QmpClient>();
  private commands = new Map<string, QmpHandler>();

  private constructor(server: net.Server, private version: { major: number; minor: number; micro: number; package: string }) {
    this.server = server;
    server.on('connection', (s) => this.accept(s));
  }

  /** Stop accepting connections (a cpr-transfer peer takes the socket over); clients stay. */
  stopListening(): void { this.server.close(); }

  /** Accept again on `fd` (a copy of the listening socket kept for a rollback). */
  async listenAgain(fd: number): Promise<void> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen({ fd }, () => resolve()); });
    server.on('connection', (s) => this.accept(s));
    this.server = server;
  }

  /**
   * Listen on a new socket at `path` (mode 0600). The socket is made here rather than by
   * net.Server.listen(path), whose close() would unlink the path: a cpr-transfer hands the
   * listening socket to the next process while this one stops accepting.
   */
  static async listen(path: string, version: QmpServer['version']): Promise<QmpServer> {
    if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path); // stale socket from a dead VMM
    const fd = socket(SOCK_STREAM);
    const old = process.umask(0o177); // created 0600: no window where others could connect
    try { bind(fd, path); } catch (e) { close(fd); throw e; } finally { process.umask(old); }
    chmodSync(path, 0o600);
    listen(fd, 16);
    return QmpServer.adopt(fd, version);
  }

  /** Serve on an inherited listening fd (after exec). */
  static async adopt(fd: number, version: QmpServer['version']): Promise<QmpServer> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen({ fd }, () => resolve()); });
    return new QmpServer(server, version);
  }

  /** The listening socket's fd, to keep across exec. */
  get fd(): number { return (this.server as unknown as { _handle: { fd: number } })._handle.fd; }

  register(name: string, handler: QmpHandler): void { this.commands.set(name, handler); }

  event(name: string, data: Record<string, unknown> = {}): void {
    const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
    const msg = { event: name, data, timestamp: { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 } };
    for (const c of this.clients) if (c.negotiated) c.send(msg);
  }

  /** Drop every client connection (before exec the fds would close anyway; be explicit). */
  disconnectAll(): void { for (const c of this.clients) c.socket.destroy(); this.clients.clear(); }

  close(): void { this.disconnectAll(); this.server.close(); }

  private accept(socket: net.Socket): void {
    const client: QmpClient = {
      socket, negotiated: false,
      send: (msg, cb) => { if (!socket.destroyed) socket.write(`${JSON.stringify(msg)}\r\n`, cb); else cb?.(); },
    };
    this.clients.add(client);
    socket.on('close', () => this.clients.delete(client));
    socket.on('error', () => socket.destroy());
    client.send({ QMP: { version: { qemu: { major: this.version.major, minor: this.version.minor, micro: this.version.micro }, package: this.version.package }, capabilities: [] } });
    let pending = '';
    let chain = Promise.resolve();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      pending += chunk;
      if (pending.length > MAX_LINE && !pending.includes('\n')) {
        client.send({ error: { class: 'GenericError', desc: `JSON input longer than ${MAX_LINE} bytes` } });
        socket.end();
        pending = '';
        return;
      }
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        // A failure in one command never takes the VMM (and the guest) down.
        if (line) chain = chain.then(() => this.dispatch(client, line)).catch((e) => {
          client.send({ error: { class: 'GenericError', desc: `internal error: ${(e as Error).message}` } });
        });
      }
    });
  }

  private async dispatch(client: QmpClient, line: string): Promise<void> {
    let msg: unknown;
    try { msg = JSON.parse(line); } catch (e) {
      client.send({ error: { class: 'GenericError', desc: `JSON parse error, ${(e as Error).message}` } });
      return;
    }
    if (!msg || typeof msg !== 'object' || Array.isArray(msg)) {
      client.send({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
      return;
    }
    if (nestingDepth(msg) > MAX_NESTING) {
      // QEMU's parser refuses this too; echoing such an id back would blow the stack.
      client.send({ error: { class: 'GenericError', desc: `JSON nesting deeper than ${MAX_NESTING} levels` } });
      return;
    }
    const { execute, arguments: args = {}, id } = msg as { execute?: unknown; arguments?: unknown; id?: unknown };
    const reply = (body: object) => client.send(id === undefined ? body : { ...body, id });
    if (typeof execute !== 'string') return reply({ error: { class: 'GenericError', desc: "QMP input lacks member 'execute'" } });
    if (!args || typeof args !== 'object' || Array.isArray(args)) return reply({ error: { class: 'GenericError', desc: "QMP input member 'arguments' must be an object" } });
    if (execute === 'qmp_capabilities') {
      if (client.negotiated) return reply({ error: { class: 'CommandNotFound', desc: "Capabilities negotiation is already complete, command 'qmp_capabilities' ignored" } });
      client.negotiated = true;
      return reply({ return: {} });
    }
    if (!client.negotiated) return reply({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
    const handler = this.commands.get(execute);
    if (!handler) return reply({ error: { class: 'CommandNotFound', desc: `The command ${execute} has not been found` } });
    try {
      const ret = await handler(args as Record<string, unknown>, client);
      reply({ return: ret ?? {} });
    } catch (e) {
      reply({ error: { class: e instanceof QmpError ? e.cls : 'GenericError', desc: (e as Error).message } });
    }
  }
}

/** A small QMP client (for `minivmm qmp`, `minivmm update` and tests). */
export class QmpConnection {
  private buffered = '';
  private waiters: ((m: Record<string, unknown>) => boolean)[] = [];
  readonly events: Record<string, unknown>[] = [];
  closed = false;

  private constructor(readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buffered += d;
      let nl: number;
      while ((nl = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, nl).trim();
        this.buffered = this.buffered.slice(nl + 1);
        if (!line) continue;
        const m = JSON.parse(line) as Record<string, unknown>;
        if ('event' in m) this.events.push(m);
        this.waiters = this.waiters.filter((w) => !w(m));
      }
    });
    socket.on('close', () => { this.closed = true; for (const w of this.waiters) w({ closed: true }); this.waiters = []; });
    socket.on('error', () => {});
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpConnection> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const c = new QmpConnection(socket);
    const greeting = await c.next((m) => 'QMP' in m, timeoutMs);
    if (!greeting || 'closed' in greeting) throw new Error(`QMP server at ${path} closed the connection before its greeting`);
    await c.execute('qmp_capabilities');
    return c;
  }

  /** Resolves with the first message `match` accepts, or with {closed:true} if the connection ends. */
  next(match: (m: Record<string, unknown>) => boolean, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    if (this.closed) return Promise.resolve({ closed: true });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`QMP: no answer within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push((m) => { if ('closed' in m || match(m)) { clearTimeout(timer); resolve(m); return true; } return false; });
    });
  }

  /** The first event named `name` not yet taken, waiting for it if needed (events may precede replies). */
  async event(name: string, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    const i = this.events.findIndex((e) => e.event === name);
    if (i >= 0) return this.events.splice(i, 1)[0];
    const m = await this.next((e) => e.event === name, timeoutMs);
    const j = this.events.indexOf(m);
    if (j >= 0) this.events.splice(j, 1);
    return m;
  }

  /** Sends a command and returns the whole reply ({return} or {error}); throws if the connection closes. */
  async request(execute: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<Record<string, unknown>> {
    const reply = this.next((m) => 'return' in m || 'error' in m, timeoutMs);
    this.socket.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    const r = await reply;
    if ('closed' in r) throw new Error(`QMP connection closed while waiting for '${execute}'`);
    return r;
  }

  /** Sends a command and returns its `return` value; an error reply throws its desc. */
  async execute(execute: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<unknown> {
    const r = await this.request(execute, args, timeoutMs);
    if ('error' in r) throw new Error((r.error as { desc: string }).desc);
    return r.return;
  }

  close(): void { this.socket.destroy(); }
}
