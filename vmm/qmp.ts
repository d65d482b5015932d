// QMP monitor on a UNIX socket, speaking QEMU's protocol: greeting, capabilities negotiation,
// {"execute": ...} commands with {"return": ...} or {"error": {"class", "desc"}} replies carrying
// the request's id, and events. Input is a JSON stream read as QEMU reads it (json-stream.ts).
// The listening socket is one of the fds kept across exec, so clients reconnect to the same path.
import net from 'node:net';
import { chmodSync, unlinkSync, existsSync, lstatSync } from 'node:fs';
import { socket, bind, listen, close, SOCK_STREAM } from '../src/libc.js';
import { JsonMessageReader } from './json-stream.js';

export class QmpError extends Error {
  constructor(message: string, readonly cls = 'GenericError') { super(message); }
}

/**
 * A command's arguments, in QAPI's terms: members by name ('*name' = optional) of a type:
 * 'str', 'bool', 'int', 'number', 'any', an enum, a list, a struct, or a union on a discriminator.
 */
export type ArgType = 'str' | 'bool' | 'int' | 'number' | 'any'
  | { enum: readonly string[] } | { list: ArgType } | { struct: Members } | Union;
export type Members = Record<string, ArgType>;
/** A flat union: `base` has the discriminator `union`, whose value picks the other members (maybe a union again). */
export interface Union { union: string; base: Members; variants: Record<string, Members | Union> }

const JSON_TYPE: Record<string, string> = { str: 'string', bool: 'boolean', int: 'integer', number: 'number' };
const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const has = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);

/** Checks `value` against `type`, worded as QEMU's qobject-input-visitor; `name` as QEMU spells it ("a.b[0]"). */
function checkValue(type: ArgType, value: unknown, name: string): void {
  const wrongType = (expected: string) => new QmpError(`Invalid parameter type for '${name}', expected: ${expected}`);
  if (type === 'any') return;
  if (typeof type === 'string') {
    const ok = type === 'str' ? typeof value === 'string' : type === 'bool' ? typeof value === 'boolean'
      : type === 'int' ? Number.isInteger(value) : typeof value === 'number';
    if (!ok) throw wrongType(JSON_TYPE[type]);
  } else if ('enum' in type) {
    if (typeof value !== 'string') throw wrongType('string');
    if (!type.enum.includes(value)) throw new QmpError(`Parameter '${name}' does not accept value '${value}'`);
  } else if ('list' in type) {
    if (!Array.isArray(value)) throw wrongType('array');
    value.forEach((v, i) => checkValue(type.list, v, `${name}[${i}]`));
  } else {
    if (!isObject(value)) throw wrongType('object');
    checkMembers(value, 'struct' in type ? type.struct : unionMembers(value, type, `${name}.`), `${name}.`);
  }
}

const isUnion = (t: Members | Union): t is Union => typeof t.union === 'string' && 'variants' in t;

/** A union's members for this value; the discriminators are checked first, as they pick the rest. */
function unionMembers(obj: Record<string, unknown>, u: Union, prefix: string): Members {
  visit(obj, u.base, prefix);
  const v = u.variants[obj[u.union] as string];
  return { ...u.base, ...(isUnion(v) ? unionMembers(obj, v, prefix) : v) };
}

/** Members in declaration order (type, then missing), then anything undeclared: QEMU's order. */
function checkMembers(obj: Record<string, unknown>, members: Members, prefix: string): void {
  visit(obj, members, prefix);
  const known = new Set(Object.keys(members).map((k) => k.replace(/^\*/, '')));
  for (const k of Object.keys(obj)) if (!known.has(k)) throw new QmpError(`Parameter '${prefix}${k}' is unexpected`);
}

function visit(obj: Record<string, unknown>, members: Members, prefix: string): void {
  for (const [key, type] of Object.entries(members)) {
    const name = key.replace(/^\*/, '');
    if (!has(obj, name)) {
      if (key.startsWith('*')) continue;
      throw new QmpError(`Parameter '${prefix}${name}' is missing`);
    }
    checkValue(type, obj[name], `${prefix}${name}`);
  }
}

export interface QmpClient { socket: net.Socket; negotiated: boolean; send(msg: unknown, cb?: () => void): void }

export interface CommandContext {
  client: QmpClient;
  /** Runs `fn` once the reply has been written (or the client is gone). */
  afterReply(fn: () => void): void;
}

export interface QmpCommand {
  /** The arguments it takes; anything else is refused before `run` is called. */
  args?: Members;
  run(args: Record<string, unknown>, ctx: CommandContext): unknown;
}

/** Requests read ahead of the one running, at most (then reading pauses). */
const MAX_WAITING = 64;

type Version = { major: number; minor: number; micro: number; package: string };

export class QmpServer {
  private server: net.Server;
  private clients = new Set<QmpClient>();
  private commands = new Map<string, QmpCommand>();
  /**
   * Every client's commands, one at a time, in arrival order (QEMU's single dispatcher, no oob):
   * two clients' stop and cont must not interleave. A failure in one never takes the VMM down.
   */
  private queue = Promise.resolve();
  /** Which events are sent (the monitor sends MIGRATION only with the `events` capability, as QEMU). */
  eventFilter: (name: string) => boolean = () => true;

  private constructor(server: net.Server, private readonly version: Version) {
    this.server = server;
    server.on('connection', (s) => this.accept(s));
    this.register('qmp_capabilities', {
      args: { '*enable': { list: { enum: ['oob'] } } },
      run: (args, { client }) => {
        // After its arguments, as QEMU: a bad argument is a GenericError even once negotiated.
        if (client.negotiated) throw new QmpError('Capabilities negotiation is already complete, command ignored', 'CommandNotFound');
        // The greeting offers nothing, so any capability asked for is unavailable.
        const wanted = (args.enable as string[] | undefined) ?? [];
        if (wanted.length) throw new QmpError(`Capability ${[...new Set(wanted)].join(', ')} not available`);
        client.negotiated = true;
        return {};
      },
    });
    this.register('query-commands', { run: () => [...this.commands.keys()].map((name) => ({ name })) });
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
  static async listen(path: string, version: Version): Promise<QmpServer> {
    if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path); // stale socket from a dead VMM
    const fd = socket(SOCK_STREAM);
    const old = process.umask(0o177); // created 0600: no window where others could connect
    try { bind(fd, path); } catch (e) { close(fd); throw e; } finally { process.umask(old); }
    chmodSync(path, 0o600);
    listen(fd, 16);
    return QmpServer.adopt(fd, version);
  }

  /** Serve on an inherited listening fd (after exec). */
  static async adopt(fd: number, version: Version): Promise<QmpServer> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen({ fd }, () => resolve()); });
    return new QmpServer(server, version);
  }

  /** The listening socket's fd, to keep across exec. */
  get fd(): number { return (this.server as unknown as { _handle: { fd: number } })._handle.fd; }

  /** QEMU's VersionInfo: the greeting's and query-version's. */
  get versionInfo(): { qemu: { major: number; minor: number; micro: number }; package: string } {
    const { major, minor, micro, package: pkg } = this.version;
    return { qemu: { major, minor, micro }, package: pkg };
  }

  register(name: string, command: QmpCommand): void { this.commands.set(name, command); }

  /** Sends an event to every negotiated client; without `data` the member is left out, as QEMU does. */
  event(name: string, data?: Record<string, unknown>): void {
    if (!this.eventFilter(name)) return;
    const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
    const timestamp = { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
    const msg = data === undefined ? { event: name, timestamp } : { event: name, data, timestamp };
    for (const c of this.clients) if (c.negotiated) c.send(msg);
  }

  /** Drop every client connection (before exec the fds would close anyway; be explicit). */
  disconnectAll(): void { for (const c of this.clients) c.socket.destroy(); this.clients.clear(); }

  close(): void { this.disconnectAll(); this.server.close(); }

  private accept(socket: net.Socket): void {
    const client: QmpClient = {
      socket, negotiated: false,
      send: (msg, cb) => { if (!socket.destroyed) socket.write(`${JSON.stringify(msg)}\r\n`, () => cb?.()); else cb?.(); },
    };
    this.clients.add(client);
    socket.on('close', () => this.clients.delete(client));
    socket.on('error', () => socket.destroy());
    client.send({ QMP: { version: this.versionInfo, capabilities: [] } });
    // Like QEMU's monitor_suspend(), reading stops while too many are waiting: a flood is held
    // back in the socket, not queued here.
    let waiting = 0;
    const reader = new JsonMessageReader((value, error) => {
      if (++waiting === MAX_WAITING) socket.pause();
      this.queue = this.queue.then(() => this.dispatch(client, value, error)).catch((e) => {
        client.send({ error: { class: 'GenericError', desc: `internal error: ${(e as Error).message}` } });
      }).finally(() => { if (waiting-- === MAX_WAITING) socket.resume(); });
    });
    socket.on('data', (chunk: Buffer) => reader.feed(chunk));
  }

  private async dispatch(client: QmpClient, msg: unknown, parseError?: string): Promise<void> {
    if (parseError !== undefined) return client.send({ error: { class: 'GenericError', desc: parseError } });
    if (!isObject(msg)) return client.send({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
    const id = has(msg, 'id') ? msg.id : undefined;
    const after: (() => void)[] = [];
    const reply = (body: object) => {
      const m = id === undefined ? body : { ...body, id };
      if (!after.length) return client.send(m);
      let done = false;
      const run = () => { if (!done) { done = true; for (const f of after) f(); } };
      client.socket.once('close', run);
      client.send(m, run);
    };
    const fail = (desc: string, cls = 'GenericError') => reply({ error: { class: cls, desc } });
    // The request's own members, in order, as QEMU's qmp_dispatch_check_obj checks them (no oob).
    for (const [k, v] of Object.entries(msg)) {
      if (k === 'execute') { if (typeof v !== 'string') return fail("QMP input member 'execute' must be a string"); }
      else if (k === 'arguments') { if (!isObject(v)) return fail("QMP input member 'arguments' must be an object"); }
      else if (k !== 'id') return fail(`QMP input member '${k}' is unexpected`);
    }
    if (!has(msg, 'execute')) return fail("QMP input lacks member 'execute'");
    const name = msg.execute as string;
    if (!client.negotiated && name !== 'qmp_capabilities') return fail("Expecting capabilities negotiation with 'qmp_capabilities'", 'CommandNotFound');
    const command = this.commands.get(name);
    if (!command) return fail(`The command ${name} has not been found`, 'CommandNotFound');
    const args = (msg.arguments ?? {}) as Record<string, unknown>;
    try {
      checkMembers(args, command.args ?? {}, '');
      const ret = await command.run(args, { client, afterReply: (fn) => after.push(fn) });
      reply({ return: ret ?? {} });
    } catch (e) {
      after.length = 0;
      fail((e as Error).message, e instanceof QmpError ? e.cls : 'GenericError');
    }
  }
}

/** A small QMP client (for `minivmm qmp`, `minivmm update` and tests). Requests carry ids. */
export class QmpConnection {
  private waiters: ((m: Record<string, unknown>) => boolean)[] = [];
  private nextId = 1;
  readonly events: Record<string, unknown>[] = [];
  closed = false;

  private constructor(readonly socket: net.Socket) {
    const reader = new JsonMessageReader((value) => {
      if (!isObject(value)) return; // not QMP: nothing waits for it
      if ('event' in value) this.events.push(value);
      this.waiters = this.waiters.filter((w) => !w(value));
    });
    socket.on('data', (d: Buffer) => reader.feed(d));
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

  /** Sends a command and returns its reply ({return} or {error}, without the id); throws if the connection closes. */
  async request(execute: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    const reply = this.next((m) => m.id === id && ('return' in m || 'error' in m), timeoutMs);
    this.socket.write(JSON.stringify(args ? { execute, arguments: args, id } : { execute, id }));
    const r = await reply;
    if ('closed' in r) throw new Error(`QMP connection closed while waiting for '${execute}'`);
    const { id: _, ...rest } = r;
    return rest;
  }

  /** Sends a command and returns its `return` value; an error reply throws its desc. */
  async execute(execute: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<unknown> {
    const r = await this.request(execute, args, timeoutMs);
    if ('error' in r) throw new Error((r.error as { desc: string }).desc);
    return r.return;
  }

  close(): void { this.socket.destroy(); }
}
