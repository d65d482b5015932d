// Command line: `minivmm run|qmp|update|...`. Bad input is one line on stderr and a non-zero exit.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { existsSync, accessSync, constants } from 'node:fs';
import { totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { MiB } from '../src/memory.js';
import type { MachineConfig } from '../cpr/state.js';
import { parseVdpaSpec } from './vdpa.js';

export class UsageError extends Error {}

const GUEST_DIR = fileURLToPath(new URL('../guests/', import.meta.url));
export const BUILTIN_GUESTS = ['hello', 'counter', 'memtest', 'netloop', 'blkcheck', 'netblk'];

const USAGE = `usage: minivmm <command> [options]
  run      --guest NAME|PATH [--memory SIZE] [--smp N] [--serial stdio|FILE] [--qmp PATH]
           [--append "key=value ..."] [--vdpa PATH|sim:net|sim:blk[,va|pa][,no-new-owner]]... [--log-level LEVEL]
           [--incoming cpr-transfer:PATH]
  qmp      --socket PATH COMMAND [JSON-ARGS]
  update   --socket PATH [--mode cpr-exec|cpr-transfer] [--incoming PATH] [--exec ARGV...] [--json]
  demo     [--updates N] [--memory SIZE] [--vdpa SPEC]... [--mode cpr-exec|cpr-transfer] [--inject new-process-crash] [--json]   (npm start)
  conformance --device PATH [--json FILE]      (the vhost-vdpa conformance suite)
  kernel-test [--kernel BZIMAGE | --source DIR] [--dma va,pa] [--no-e2e | --e2e-only] [--install-deps] ...
              (the suite and a live update against a real kernel's vhost-vdpa + vdpa_sim, in QEMU)`;

/** "512M", "1G", "16GiB", "1048576" → bytes. */
export function parseSize(text: string): number {
  const shown = JSON.stringify(text).slice(1, -1); // never echo control characters
  const m = /^(\d{1,16}(?:\.\d{1,6})?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`invalid size '${shown}' (examples: 512M, 1G, 16G)`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const bytes = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(bytes)) throw new UsageError(`invalid size '${shown}' (too large)`);
  return bytes;
}

export function resolveGuest(guest: string): string {
  if (BUILTIN_GUESTS.includes(guest)) {
    const p = resolve(GUEST_DIR, `${guest}.elf`);
    if (!existsSync(p)) throw new UsageError(`built-in guest '${guest}' is not built (run: npm run build)`);
    return p;
  }
  if (!guest.includes('/') && !existsSync(guest)) throw new UsageError(`unknown guest '${guest}' (built-in: ${BUILTIN_GUESTS.join(', ')}; or give a path)`);
  const p = resolve(guest);
  if (!existsSync(p)) throw new UsageError(`guest image ${guest} does not exist`);
  return p;
}

type Values = Record<string, string | boolean | string[] | undefined>;
function parse(args: string[], options: ParseArgsConfig['options'], allowPositionals = false): { values: Values; positionals: string[] } {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true }) as { values: Values; positionals: string[] };
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]);
  }
}

export function parseRunConfig(args: string[]): MachineConfig & { incoming?: string } {
  const { values } = parse(args, {
    guest: { type: 'string' }, memory: { type: 'string', default: '256M' }, smp: { type: 'string', default: '1' },
    serial: { type: 'string', default: 'stdio' }, qmp: { type: 'string' }, append: { type: 'string', default: '' },
    'log-level': { type: 'string', default: 'info' }, vdpa: { type: 'string', multiple: true, default: [] },
    incoming: { type: 'string' },
  });
  if (values.incoming !== undefined) {
    const inc = values.incoming as string;
    if (!inc.startsWith('cpr-transfer:') || inc.length <= 13) throw new UsageError(`--incoming ${inc}: expected cpr-transfer:PATH`);
    if (!values.guest) values.guest = 'hello'; // the state decides; the options only have to parse
  }
  if (!values.guest) throw new UsageError('run: --guest NAME|PATH is required');
  const memory = parseSize(values.memory as string);
  if (memory < 16 * MiB) throw new UsageError(`--memory ${values.memory}: at least 16M`);
  if (memory % (2 * MiB) !== 0) throw new UsageError(`--memory ${values.memory}: must be a multiple of 2M`);
  if (memory > totalmem()) throw new UsageError(`--memory ${values.memory} exceeds host memory (${Math.floor(totalmem() / MiB)} MiB)`);
  const smp = Number(values.smp);
  if (!Number.isInteger(smp) || smp < 1 || smp > 4) throw new UsageError(`--smp ${values.smp}: must be 1 to 4`);
  const vdpa = values.vdpa as string[];
  for (const v of vdpa) {
    try { parseVdpaSpec(v); } catch (e) { throw new UsageError((e as Error).message); }
  }
  const level = values['log-level'] as string;
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(level)) throw new UsageError(`--log-level ${level}: not a level (fatal, error, warn, info, debug, trace, silent)`);
  return {
    guest: resolveGuest(values.guest as string),
    memory, smp,
    serial: values.serial === 'stdio' ? 'stdio' : resolve(values.serial as string),
    cmdline: values.append as string,
    qmp: values.qmp ? resolve(values.qmp as string) : null,
    logLevel: level,
    vdpa: vdpa.map((v) => (v.startsWith('sim:') ? v : resolve(v))),
    incoming: values.incoming ? resolve((values.incoming as string).slice('cpr-transfer:'.length)) : undefined,
  };
}

function checkKvm(): void {
  try { accessSync('/dev/kvm', constants.R_OK | constants.W_OK); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(code === 'ENOENT' ? 'no /dev/kvm on this host (KVM is required)' : `cannot use /dev/kvm: ${code} (are you in the kvm group?)`);
  }
}

async function cmdRun(args: string[]): Promise<void> {
  const { incoming, ...config } = parseRunConfig(args);
  checkKvm();
  const { setLogLevel } = await import('./log.js');
  setLogLevel(config.logLevel);
  if (incoming) {
    // cpr-transfer target: load everything now, then wait for the old process on the socket.
    const { incomingTransfer } = await import('../cpr/transfer.js');
    await incomingTransfer(incoming, config.smp);
    return;
  }
  const { startVmm } = await import('./start.js');
  await startVmm(config);
}

async function cmdQmp(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, { socket: { type: 'string' } }, true);
  if (!values.socket || positionals.length < 1 || positionals.length > 2) throw new UsageError('usage: minivmm qmp --socket PATH COMMAND [JSON-ARGS]');
  let cmdArgs: Record<string, unknown> | undefined;
  if (positionals[1] !== undefined) {
    try { cmdArgs = JSON.parse(positionals[1]); } catch (e) { throw new UsageError(`JSON-ARGS: ${(e as Error).message}`); }
    if (!cmdArgs || typeof cmdArgs !== 'object' || Array.isArray(cmdArgs)) throw new UsageError('JSON-ARGS must be a JSON object');
  }
  const { QmpConnection } = await import('./qmp.js');
  const c = await connectOrExplain(QmpConnection, values.socket as string);
  const reply = await c.request(positionals[0], cmdArgs);
  c.close();
  process.stdout.write(`${JSON.stringify(reply)}\n`);
  if ('error' in reply) process.exitCode = 1;
}

async function connectOrExplain<T>(Conn: { connect(p: string): Promise<T> }, path: string): Promise<T> {
  try { return await Conn.connect(path); } catch (e) {
    throw new UsageError(`cannot connect to QMP socket ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

async function cmdUpdate(args: string[]): Promise<void> {
  const execAt = args.indexOf('--exec');
  const execArgv = execAt >= 0 ? args.slice(execAt + 1) : null;
  const { values } = parse(execAt >= 0 ? args.slice(0, execAt) : args, {
    socket: { type: 'string' }, json: { type: 'boolean', default: false }, timeout: { type: 'string', default: '60' },
    mode: { type: 'string', default: 'cpr-exec' }, incoming: { type: 'string' },
  });
  if (!values.socket) throw new UsageError('usage: minivmm update --socket PATH [--mode cpr-exec|cpr-transfer] [--incoming PATH] [--json] [--exec ARGV...]');
  if (execArgv && execArgv.length === 0) throw new UsageError('update: --exec needs a command');
  const mode = values.mode as string;
  if (mode !== 'cpr-exec' && mode !== 'cpr-transfer') throw new UsageError(`update: --mode ${mode}: cpr-exec or cpr-transfer`);
  if (mode === 'cpr-transfer' && !values.incoming) throw new UsageError('update: --mode cpr-transfer needs --incoming PATH (the socket of a process started with run --incoming cpr-transfer:PATH)');
  const { runUpdate } = await import('./update.js');
  const result = mode === 'cpr-transfer'
    ? await runUpdate(values.socket as string, null, Number(values.timeout) * 1000, { mode, uri: `unix:${resolve(values.incoming as string)}` })
    : await runUpdate(values.socket as string, execArgv, Number(values.timeout) * 1000);
  if (values.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else if (result.status === 'completed') {
    const r = result as { downtime: number; cpr: { path: string; phases: Record<string, number> } };
    process.stdout.write(`update completed: blackout ${r.downtime} ms (${Object.entries(r.cpr.phases).map(([k, v]) => `${k} ${v}`).join(', ')})\n`);
  } else process.stdout.write(`update failed: ${String(result['error-desc'] ?? 'unknown error')}\n`);
  if (result.status !== 'completed') process.exitCode = 1;
}

async function cmdDemo(args: string[]): Promise<void> {
  const { values } = parse(args, {
    updates: { type: 'string', default: '3' }, memory: { type: 'string', default: '1G' }, vdpa: { type: 'string', multiple: true },
    json: { type: 'boolean', default: false }, 'interval-ms': { type: 'string', default: '2000' },
    mode: { type: 'string', default: 'cpr-exec' }, inject: { type: 'string' },
  });
  const mode = values.mode as string;
  if (mode !== 'cpr-exec' && mode !== 'cpr-transfer') throw new UsageError(`demo: --mode ${mode}: cpr-exec or cpr-transfer`);
  if (values.inject !== undefined && values.inject !== 'new-process-crash') throw new UsageError(`demo: --inject ${values.inject}: the only fault is new-process-crash`);
  if (values.inject && mode !== 'cpr-transfer') throw new UsageError('demo: --inject new-process-crash needs --mode cpr-transfer');
  const updates = Number(values.updates);
  if (!Number.isInteger(updates) || updates < 0 || updates > 10000) throw new UsageError(`--updates ${values.updates}: not a count`);
  parseSize(values.memory as string);
  const vdpa = (values.vdpa as string[] | undefined) ?? ['sim:net', 'sim:blk'];
  for (const v of vdpa) { try { parseVdpaSpec(v); } catch (e) { throw new UsageError((e as Error).message); } }
  checkKvm();
  const { runDemo } = await import('./demo.js');
  const r = await runDemo({ updates, memory: values.memory as string, vdpa, json: values.json as boolean, intervalMs: Number(values['interval-ms']), mode, inject: values.inject as string | undefined });
  if (values.json) process.stdout.write(`${JSON.stringify(r)}\n`);
}

async function cmdConformance(args: string[]): Promise<void> {
  const { values } = parse(args, { device: { type: 'string' }, json: { type: 'string' }, only: { type: 'string' } });
  if (!values.device) throw new UsageError('usage: minivmm conformance --device PATH [--json FILE] [--only N,N,...]');
  const only = values.only ? (values.only as string).split(',').map(Number) : undefined;
  if (only?.some((n) => !Number.isInteger(n))) throw new UsageError(`--only ${values.only}: case numbers, comma-separated`);
  if (!existsSync(values.device as string)) throw new UsageError(`conformance: ${values.device} does not exist`);
  const { runConformance } = await import('../tools/conformance/main.js');
  const r = await runConformance({ device: values.device as string, json: values.json as string | undefined, only });
  process.exitCode = r.failed > 0 ? 1 : 0;
}

async function cmdKernelTest(args: string[]): Promise<void> {
  const { kernelTest } = await import('../tools/kernel/main.js');
  process.exitCode = await kernelTest(args);
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  run: cmdRun, qmp: cmdQmp, update: cmdUpdate, demo: cmdDemo, conformance: cmdConformance, 'kernel-test': cmdKernelTest,
};

export function registerCommand(name: string, fn: (args: string[]) => Promise<void>): void { COMMANDS[name] = fn; }

export async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  try {
    if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') { process.stdout.write(`${USAGE}\n`); return; }
    const fn = COMMANDS[cmd];
    if (!fn) throw new UsageError(`unknown command '${JSON.stringify(cmd).slice(1, -1)}' (see minivmm --help)`);
    await fn(rest);
  } catch (e) {
    fail(e);
  }
}

export function fail(e: unknown): never {
  // One line, always: messages that quote input must not smuggle in line breaks.
  const msg = (e instanceof Error ? e.message : String(e)).replace(/\r?\n/g, ' ');
  process.stderr.write(`minivmm: ${msg}\n`);
  if (process.env.MINIVMM_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  process.exit(e instanceof UsageError ? 2 : 1);
}
