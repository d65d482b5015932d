// Command line: `minivmm run|qmp|update|...`, the entry points above every other layer (the VMM,
// the live-update transports and the tools). Bad input is one line on stderr and a non-zero exit.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseVdpaSpec } from '../vmm/vdpa.js';
import { UsageError, parse, parseSize, parseRunConfig, defaultAccel } from '../vmm/config.js';
import { openAccelerator, isAccelChoice, type AccelChoice } from '../src/accel/select.js';
import { AccelUnavailable, type Accelerator } from '../src/accel/index.js';

const USAGE = `usage: minivmm <command> [options]
  run      --guest NAME|PATH [--memory SIZE] [--smp N] [--serial stdio|FILE] [--qmp PATH]
           [--append "key=value ..."] [--vdpa PATH|sim:net|sim:blk[,va|pa][,no-new-owner]]... [--log-level LEVEL]
           [--accel kvm|emu|auto] [--incoming cpr-transfer:PATH]
  qmp      --socket PATH COMMAND [JSON-ARGS]
  update   --socket PATH [--mode cpr-exec|cpr-transfer] [--incoming PATH] [--exec ARGV...] [--json]
  demo     [--updates N] [--memory SIZE] [--vdpa SPEC]... [--mode cpr-exec|cpr-transfer] [--inject new-process-crash]
           [--accel kvm|emu|auto] [--json]   (npm start)
  conformance --device PATH [--json FILE]      (the vhost-vdpa conformance suite)
  kernel-test [--kernel BZIMAGE | --source DIR] [--dma va,pa] [--no-e2e | --e2e-only] [--install-deps] ...
              (the suite and a live update against a real kernel's vhost-vdpa + vdpa_sim, in QEMU)
  vdpa-sim --dir DIR [--daemon] [--log FILE] --dev NAME:net|blk[,va|pa][,no-new-owner][,backing=FILE]...
           (the embedded vhost-vdpa device on its own: DIR/vhost-vdpa-N)
  vdpa-sim stop --dir DIR
  vdpa [-j] [-p] dev show [NAME] | add name NAME mgmtdev vdpasim_net|vdpasim_blk [mac MAC] [dma va|pa]
           [model no-new-owner] [backing FILE] | del NAME  --dir DIR   (iproute2's vdpa dev, for vdpa-sim)`;

/** The accelerator `--accel` names; `auto` says on stderr which one runs and why. */
async function accelerator(choice: AccelChoice): Promise<Accelerator> {
  try {
    const { accel, notice } = await openAccelerator(choice);
    if (notice) process.stderr.write(`minivmm: ${notice}\n`);
    return accel;
  } catch (e) {
    if (e instanceof AccelUnavailable) throw new UsageError(`--accel ${choice}: ${e.message}`);
    throw e;
  }
}

async function cmdRun(args: string[]): Promise<void> {
  const { incoming, ...config } = parseRunConfig(args);
  const accel = await accelerator(config.accel);
  const { setLogLevel } = await import('../vmm/log.js');
  setLogLevel(config.logLevel);
  if (incoming) {
    // cpr-transfer target: load everything now, then wait for the old process on the socket.
    const { waitForTransfer } = await import('../cpr/index.js');
    await waitForTransfer(incoming, config.smp, accel);
    return;
  }
  const [{ Vmm }, { MIGRATORS }] = await Promise.all([import('../vmm/vmm.js'), import('../cpr/index.js')]);
  await Vmm.start(config, accel, MIGRATORS);
}

async function cmdQmp(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, { socket: { type: 'string' } }, true);
  if (!values.socket || positionals.length < 1 || positionals.length > 2) throw new UsageError('usage: minivmm qmp --socket PATH COMMAND [JSON-ARGS]');
  let cmdArgs: Record<string, unknown> | undefined;
  if (positionals[1] !== undefined) {
    try { cmdArgs = JSON.parse(positionals[1]); } catch (e) { throw new UsageError(`JSON-ARGS: ${(e as Error).message}`); }
    if (!cmdArgs || typeof cmdArgs !== 'object' || Array.isArray(cmdArgs)) throw new UsageError('JSON-ARGS must be a JSON object');
  }
  const { QmpConnection } = await import('../vmm/qmp.js');
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
  const { runUpdate } = await import('../vmm/update.js');
  const result = mode === 'cpr-transfer'
    ? await runUpdate(values.socket as string, null, Number(values.timeout) * 1000, { mode, uri: `unix:${resolve(values.incoming as string)}` })
    : await runUpdate(values.socket as string, execArgv, Number(values.timeout) * 1000);
  if (values.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else if (result.status === 'completed') {
    const cpr = result['x-cpr'] as { downtime: number; phases: Record<string, number> };
    process.stdout.write(`update completed: blackout ${cpr.downtime} ms (${Object.entries(cpr.phases).map(([k, v]) => `${k} ${v}`).join(', ')})\n`);
  } else process.stdout.write(`update failed: ${String(result['error-desc'] ?? 'unknown error')}\n`);
  if (result.status !== 'completed') process.exitCode = 1;
}

async function cmdDemo(args: string[]): Promise<void> {
  const { values } = parse(args, {
    updates: { type: 'string', default: '3' }, memory: { type: 'string', default: '1G' }, vdpa: { type: 'string', multiple: true },
    json: { type: 'boolean', default: false }, 'interval-ms': { type: 'string', default: '2000' },
    mode: { type: 'string', default: 'cpr-exec' }, inject: { type: 'string' }, accel: { type: 'string', default: defaultAccel() },
  });
  const mode = values.mode as string;
  const choice = values.accel as string;
  if (!isAccelChoice(choice)) throw new UsageError(`demo: --accel ${choice}: expected kvm, emu or auto`);
  if (mode !== 'cpr-exec' && mode !== 'cpr-transfer') throw new UsageError(`demo: --mode ${mode}: cpr-exec or cpr-transfer`);
  if (values.inject !== undefined && values.inject !== 'new-process-crash') throw new UsageError(`demo: --inject ${values.inject}: the only fault is new-process-crash`);
  if (values.inject && mode !== 'cpr-transfer') throw new UsageError('demo: --inject new-process-crash needs --mode cpr-transfer');
  const updates = Number(values.updates);
  if (!Number.isInteger(updates) || updates < 0 || updates > 10000) throw new UsageError(`--updates ${values.updates}: not a count`);
  parseSize(values.memory as string);
  const vdpa = (values.vdpa as string[] | undefined) ?? ['sim:net', 'sim:blk'];
  for (const v of vdpa) { try { parseVdpaSpec(v); } catch (e) { throw new UsageError((e as Error).message); } }
  const accel = await accelerator(choice); // fails here, with its reason, rather than in the VM's log
  const { runDemo } = await import('./demo.js');
  const r = await runDemo({ updates, memory: values.memory as string, vdpa, json: values.json as boolean, intervalMs: Number(values['interval-ms']), mode, inject: values.inject as string | undefined, extraArgs: ['--accel', accel.kind] });
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
  'vdpa-sim': async (args) => (await import('./vdpa-sim.js')).cmdVdpaSim(args),
  vdpa: async (args) => (await import('./vdpa-sim.js')).cmdVdpa(args),
};

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
