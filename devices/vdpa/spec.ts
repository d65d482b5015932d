// The one grammar for an embedded vhost-vdpa device, shared by `minivmm vdpa-sim --dev`, the
// VMM's `--vdpa sim:...`, the daemon's `--dev` and its control file:
//
//   [NAME:]net|blk[,va|pa][,no-new-owner][,backing=FILE][,mac=XX:XX:XX:XX:XX:XX][,pin-cost=MS_PER_GIB]
//                 [,remapLagsOutsideBatch][,newOwnerRlimitBeforeBusy]
//
// NAME is the vdpa device name (`vdpa dev add name NAME`); the node it gets is vhost-vdpa-N.
// va (default) keeps user virtual addresses like vdpa_sim `use_va`, pa pins like mlx5;
// no-new-owner models an upstream kernel; backing (blk) keeps the sectors in a file; mac (net) is
// the `mac` attribute of `vdpa dev add`; pin-cost adds the spec's pin-time charge; the last two
// switch on the quirks Q1 and Q2.
import { resolve } from 'node:path';

/** Quirk switches (intended semantics when off). */
export interface Quirks { remapLagsOutsideBatch?: boolean; newOwnerRlimitBeforeBusy?: boolean }
export const QUIRKS = ['remapLagsOutsideBatch', 'newOwnerRlimitBeforeBusy'] as const;

export interface DeviceSpec {
  name: string;
  type: 'net' | 'blk';
  dma: 'va' | 'pa';
  model?: 'no-new-owner';
  quirks?: Quirks;
  /** blk: a file to keep the sectors in (they then survive a daemon restart); RAM by default. */
  backing?: string;
  /** net: the config MAC (all zeros without it, as vdpa_sim_net without a `mac` attribute). */
  mac?: string;
  /** Extra pin time in ms per GiB pinned (the spec's cost model); 0 by default. */
  pinCostMsPerGib?: number;
}

export class DeviceSpecError extends Error {}

export const NAME_RE = /^[A-Za-z0-9_.-]{1,32}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const OPTIONS = 'va, pa, no-new-owner, backing=FILE, mac=XX:XX:XX:XX:XX:XX, pin-cost=MS_PER_GIB, remapLagsOutsideBatch, newOwnerRlimitBeforeBusy';

/**
 * Parses `[NAME:]TYPE[,OPTION]...`. Without a NAME, `name` is used (an error if none is given).
 * Relative backing paths are resolved against the current directory. `=` after NAME is accepted
 * too: the separator of daemon arguments kept in CPR states written by older builds.
 */
export function parseDeviceSpec(text: string, name?: string): DeviceSpec {
  const shown = JSON.stringify(text).slice(1, -1);
  const m = /^(?:([^:=,]*)[:=])?([^,]*)((?:,.*)?)$/.exec(text);
  const devName = m?.[1] ?? name;
  if (!m || devName === undefined) throw new DeviceSpecError(`'${shown}': want NAME:net|blk[,OPTION]...`);
  if (!NAME_RE.test(devName)) throw new DeviceSpecError(`'${shown}': bad device name '${devName}' (letters, digits, '_', '.', '-'; at most 32)`);
  if (m[2] !== 'net' && m[2] !== 'blk') throw new DeviceSpecError(`'${shown}': the device type is net or blk`);
  const d: DeviceSpec = { name: devName, type: m[2], dma: 'va' };
  for (const opt of m[3].split(',').slice(1)) {
    const [key, value] = opt.includes('=') ? [opt.slice(0, opt.indexOf('=')), opt.slice(opt.indexOf('=') + 1)] : [opt, undefined];
    if (value === undefined && (key === 'va' || key === 'pa')) d.dma = key;
    else if (value === undefined && key === 'no-new-owner') d.model = key;
    else if (value === undefined && (QUIRKS as readonly string[]).includes(key)) d.quirks = { ...d.quirks, [key]: true };
    else if (key === 'backing' && value && d.type === 'blk') d.backing = resolve(value);
    else if (key === 'mac' && value && d.type === 'net' && MAC_RE.test(value)) d.mac = value.toLowerCase();
    else if (key === 'pin-cost' && value && /^\d{1,6}(\.\d{1,6})?$/.test(value)) d.pinCostMsPerGib = Number(value);
    else throw new DeviceSpecError(`'${shown}': bad option '${JSON.stringify(opt).slice(1, -1)}' (${OPTIONS}; backing for blk, mac for net)`);
  }
  return d;
}

/** The inverse of parseDeviceSpec: NAME:TYPE,DMA[,OPTION]... */
export function formatDeviceSpec(d: DeviceSpec): string {
  const opts: string[] = [d.type, d.dma];
  if (d.model) opts.push(d.model);
  for (const q of QUIRKS) if (d.quirks?.[q]) opts.push(q);
  if (d.backing) opts.push(`backing=${d.backing}`);
  if (d.mac) opts.push(`mac=${d.mac}`);
  if (d.pinCostMsPerGib) opts.push(`pin-cost=${d.pinCostMsPerGib}`);
  return `${d.name}:${opts.join(',')}`;
}

/** The vdpa management device of a type, as the kernel names vdpa_sim's. */
export const MGMTDEV = { net: 'vdpasim_net', blk: 'vdpasim_blk' } as const;
