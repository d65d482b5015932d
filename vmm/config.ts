// A VM's configuration from `run`-style arguments: every check a user's input needs, each
// failing with one line (UsageError). The CLI, the benchmark and the fuzzers share it.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { existsSync } from 'node:fs';
import { totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { MiB } from '../src/memory.js';
import { isAccelChoice } from '../src/accel/select.js';
import type { MachineConfig } from './state.js';
import { parseVdpaSpec } from './vdpa.js';

/** Bad user input: the CLI prints its one line and exits with status 2. */
export class UsageError extends Error {}

const GUEST_DIR = fileURLToPath(new URL('../guests/', import.meta.url));
export const BUILTIN_GUESTS = ['hello', 'counter', 'memtest', 'netloop', 'blkcheck', 'netblk'];

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

export type Values = Record<string, string | boolean | string[] | undefined>;
export function parse(args: string[], options: ParseArgsConfig['options'], allowPositionals = false): { values: Values; positionals: string[] } {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true }) as { values: Values; positionals: string[] };
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]);
  }
}

/** --accel's default: MINIVMM_ACCEL if set (tests and CI pick the accelerator for every VM they start), else auto. */
export const defaultAccel = (): string => process.env.MINIVMM_ACCEL || 'auto';

export function parseRunConfig(args: string[]): MachineConfig & { incoming?: string } {
  const { values } = parse(args, {
    guest: { type: 'string' }, memory: { type: 'string', default: '256M' }, smp: { type: 'string', default: '1' },
    serial: { type: 'string', default: 'stdio' }, qmp: { type: 'string' }, append: { type: 'string', default: '' },
    'log-level': { type: 'string', default: 'info' }, vdpa: { type: 'string', multiple: true, default: [] },
    incoming: { type: 'string' }, accel: { type: 'string', default: defaultAccel() },
  });
  const accel = values.accel as string;
  if (!isAccelChoice(accel)) throw new UsageError(`--accel ${accel}: expected kvm, emu or auto`);
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
    accel,
    incoming: values.incoming ? resolve((values.incoming as string).slice('cpr-transfer:'.length)) : undefined,
  };
}

