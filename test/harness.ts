// Test harness: run the real `minivmm` binary as a child process and watch its output.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { QmpConnection } from '../vmm/qmp.js';

export const ROOT = resolve(import.meta.dirname, '..');
/** The build the tests run: the run's private copy (test/run-setup.ts), so a rebuild of dist/ meanwhile changes nothing. */
export const BUILD = process.env.MINIVMM_TEST_BUILD ?? ROOT;
export const BIN = join(BUILD, 'bin/minivmm.js');

const tempDirs: string[] = [];
/** A scratch directory, removed after the test file (test/leftovers.ts). */
export function tempDir(prefix = 'minivmm-test-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.push(d);
  return d;
}
/** Removes the scratch directories; one that cannot be removed (a mount inside) is left for the leftovers check. */
export function removeTempDirs(): void {
  for (const d of tempDirs.splice(0)) { try { rmSync(d, { recursive: true, force: true }); } catch { /* reported as left behind */ } }
}

export interface Run { code: number | null; signal: string | null; stdout: string; stderr: string }

/** Runs minivmm to completion. */
export function runMinivmm(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; stdio?: (number | 'pipe' | 'ignore')[] } = {}): Promise<Run> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: opts.env ?? process.env, stdio: (opts.stdio ?? ['ignore', 'pipe', 'pipe']) as never });
    let stdout = '', stderr = '';
    child.stdout?.on('data', (d) => { stdout += d; });
    child.stderr?.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('close', (code, signal) => { clearTimeout(timer); resolvePromise({ code, signal, stdout, stderr }); });
  });
}

/** A running VM with a QMP socket, its output captured line by line. */
export class VmProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;

  constructor(args: string[], readonly qmpPath: string) {
    this.child = spawn(process.execPath, [BIN, 'run', ...args, '--qmp', qmpPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d) => { this.stdout += d; });
    this.child.stderr!.on('data', (d) => { this.stderr += d; });
    this.exited = new Promise((r) => this.child.on('close', (code) => r(code)));
  }

  static async start(args: string[], dir = tempDir()): Promise<VmProcess> {
    const vm = new VmProcess(args, join(dir, 'qmp.sock'));
    await vm.waitFor(/\n/, 30_000);
    return vm;
  }

  get pid(): number { return this.child.pid!; }
  lines(): string[] { return this.stdout.split('\n').filter(Boolean); }

  /** Waits until stdout (from `from` on) matches. */
  async waitFor(re: RegExp, timeoutMs = 20_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.stdout.slice(from).match(re);
      if (m) return m;
      if (this.child.exitCode !== null) throw new Error(`VM exited (${this.child.exitCode}) before ${re}: ${this.stderr.slice(-500)}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}; stderr: ${this.stderr.slice(-500)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  qmp(): Promise<QmpConnection> { return QmpConnection.connect(this.qmpPath); }

  /** What each fd is, once no monitor connection is held (settledFds). */
  fds(): Promise<string[]> { return settledFds(this.pid, this.qmpPath); }

  /** Ends the VM: `quit` first, so it stops the device daemon it started; SIGKILL if that fails. */
  async kill(): Promise<void> {
    if (this.child.exitCode !== null) return;
    await quitOrKill(this.qmpPath, [this.child]);
    await this.exited;
  }
}

/** Asks the VM to quit over QMP (it then stops its device daemon), then SIGKILLs what is left. */
async function quitOrKill(qmpPath: string, procs: ChildProcess[]): Promise<void> {
  const alive = () => procs.filter((c) => c.exitCode === null && c.signalCode === null);
  try {
    const c = await Promise.race([QmpConnection.connect(qmpPath, 2000), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('timeout')), 2000))]);
    await c.execute('quit', undefined, 2000).catch(() => undefined);
    c.close();
    const deadline = Date.now() + 3000;
    while (alive().length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  } catch { /* no monitor: kill */ }
  for (const c of alive()) c.kill('SIGKILL');
}

/** Counter values printed by the `counter` guest, in order. */
export function counterValues(out: string): bigint[] {
  return [...out.matchAll(/^counter (\d+) tsc (\d+) round (\d+)$/gm)].map((m) => BigInt(m[1]));
}

/**
 * A minimal ELF64 executable with `code` at 1 MiB (for tests of the loader and of exits).
 * Hand-made so that a test controls every byte.
 */
export function writeTinyElf(path: string, code: Buffer, patch?: (elf: Buffer) => void): string {
  const hdr = Buffer.alloc(64 + 56);
  hdr.writeUInt32BE(0x7f454c46, 0); hdr[4] = 2; hdr[5] = 1; hdr[6] = 1;
  hdr.writeUInt16LE(2, 16); hdr.writeUInt16LE(62, 18); hdr.writeUInt32LE(1, 20);
  hdr.writeBigUInt64LE(0x100000n, 24); hdr.writeBigUInt64LE(64n, 32);
  hdr.writeUInt16LE(64, 52); hdr.writeUInt16LE(56, 54); hdr.writeUInt16LE(1, 56);
  const ph = 64;
  hdr.writeUInt32LE(1, ph); hdr.writeUInt32LE(5, ph + 4);
  hdr.writeBigUInt64LE(120n, ph + 8); hdr.writeBigUInt64LE(0x100000n, ph + 16); hdr.writeBigUInt64LE(0x100000n, ph + 24);
  hdr.writeBigUInt64LE(BigInt(code.length), ph + 32); hdr.writeBigUInt64LE(BigInt(code.length), ph + 40);
  // entry = 1 MiB: the segment starts at file offset 120, loaded at 1 MiB
  const elf = Buffer.concat([hdr, code]);
  patch?.(elf);
  writeFileSync(path, elf);
  return path;
}

/**
 * A VM that may move between processes (cpr-transfer): the output of every process it ran in is
 * collected in order, and the process currently holding it is tracked.
 */
export class MovingVm {
  out = '';
  err = '';
  readonly processes: ChildProcess[] = [];
  current: ChildProcess;
  private n = 0;

  constructor(readonly args: string[], readonly dir = tempDir()) {
    this.current = this.launch([]);
  }
  get qmpPath(): string { return join(this.dir, 'qmp.sock'); }

  private launch(extra: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
    const c = spawn(process.execPath, [BIN, 'run', ...this.args, '--qmp', this.qmpPath, ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env });
    c.stdout!.on('data', (d) => { this.out += d; });
    c.stderr!.on('data', (d) => { this.err += d; });
    this.processes.push(c);
    return c;
  }

  async waitFor(re: RegExp, timeoutMs = 30_000, from = 0): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!re.test(this.out.slice(from))) {
      if (this.processes.every((c) => c.exitCode !== null || c.signalCode !== null)) throw new Error(`every VM process exited: ${this.err.slice(-500)}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}: ${this.err.slice(-500)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Starts a process waiting for cpr-transfer; returns its socket path once it listens. */
  async prepareIncoming(env?: NodeJS.ProcessEnv): Promise<{ sock: string; child: ChildProcess }> {
    const sock = join(this.dir, `incoming-${++this.n}.sock`);
    const child = this.launch(['--incoming', `cpr-transfer:${sock}`], env);
    const deadline = Date.now() + 30_000;
    // The socket file appears at bind(); the line comes after listen().
    while (!existsSync(sock) || !this.err.includes(`waiting for cpr-transfer on ${sock}`)) {
      if (child.exitCode !== null) throw new Error(`incoming process exited ${child.exitCode}: ${this.err.slice(-300)}`);
      if (Date.now() > deadline) throw new Error('incoming process did not listen');
      await new Promise((r) => setTimeout(r, 10));
    }
    return { sock, child };
  }

  /** What each fd of the current process is, once it holds no monitor connection (settledFds). */
  fdTargets(): Promise<string[]> { return settledFds(this.current.pid!, this.qmpPath); }

  async killAll(): Promise<void> {
    await quitOrKill(this.qmpPath, this.processes);
    await Promise.all(this.processes.map((c) => (c.exitCode !== null || c.signalCode !== null ? null : new Promise((r) => c.once('close', r)))));
  }
}

/** Monitor connections `pid` holds: its accepted sockets on the QMP path (/proc/net/unix shows the listener's path for them). */
export function monitorConnections(pid: number, qmpPath: string): number {
  const inodes = new Set(readFileSync('/proc/net/unix', 'utf8').split('\n').map((l) => l.trim().split(/\s+/))
    .filter((f) => f[7] === qmpPath && f[5] === '03').map((f) => f[6]));
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).filter((f) => { try { return inodes.has(/^socket:\[(\d+)\]$/.exec(readlinkSync(`${dir}/${f}`))?.[1] ?? ''); } catch { return false; } }).length;
}

/**
 * The fds of `pid` once it holds no monitor connection (a client that just closed is let go
 * asynchronously): the figure to compare for leaks. Fails if a connection is still held after 5 s.
 */
export async function settledFds(pid: number, qmpPath: string): Promise<string[]> {
  const deadline = Date.now() + 5000;
  while (monitorConnections(pid, qmpPath) > 0) {
    if (Date.now() > deadline) throw new Error(`process ${pid} still holds ${monitorConnections(pid, qmpPath)} monitor connection(s) after 5 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).map((f) => { try { return readlinkSync(`${dir}/${f}`).replace(/\d+/g, 'N'); } catch { return 'gone'; } }).sort();
}

/** Polls `cond` until it holds; fails naming `what` after `ms`. */
export async function waitUntil(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** `p`, or a failure naming `what` after `ms` (a test must fail, not hang). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, rej) => { timer = setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms); })])
    .finally(() => clearTimeout(timer));
}
