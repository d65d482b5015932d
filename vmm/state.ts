// What a VM saves for a live update (Firecracker's vstate): the machine in the accelerator's
// neutral schema (src/accel), the devices, and the update record. This layer owns these types
// and their validation; cpr/ only wraps them in its envelope and carries the fds beside them.
import {
  GPR_NAMES, SEGMENT_NAMES,
  type AccelKind, type AccelPrivate, type CpuState, type PlatformState, type Segment, type PicState, type PitChannelState,
} from '../src/accel/index.js';
import type { AccelChoice } from '../src/accel/select.js';
import type { VdpaState } from '../devices/vhost-vdpa.js';

export interface MachineConfig {
  guest: string;
  memory: number;
  smp: number;
  serial: string; // 'stdio' or a file path
  cmdline: string;
  qmp: string | null;
  logLevel: string;
  vdpa: string[];
  /** What the user asked for (--accel); the accelerator running is MachineState.accel. */
  accel: AccelChoice;
}

export interface MachineState {
  config: MachineConfig;
  /** The accelerator that saved this state. */
  accel: AccelKind;
  /** The CPU model the guest sees (accelerator-specific: reapplied only on the same kind). */
  cpuModel: AccelPrivate;
  memory: { name: string; gpa: number; size: number }[];
  vcpus: CpuState[];
  platform: PlatformState;
  serial: number[];
}

/** Migration bookkeeping that rides along, so the new image can report the update. */
export interface UpdateRecord {
  n: number; // how many updates this VM has been through, this one included
  mode: 'cpr-exec' | 'cpr-transfer';
  /** process.hrtime (CLOCK_MONOTONIC) in ns, comparable across exec. Later times (state written,
   *  exec/send) cannot be in the sealed state: they travel beside it. */
  t: { pauseStart: bigint; paused: bigint; requested?: bigint };
  history: { n: number; downtime: number; path: string; phases: Record<string, number> }[];
}

/** The embedded device daemon a VM started: kept in the state, so every image supervises it. */
export interface DaemonRef { pid: number; dir: string; args?: string[]; restarts?: number; files?: string[] }

export interface VmmState {
  machine: MachineState;
  vdpa: VdpaState[];
  daemon?: DaemonRef;
  update: UpdateRecord;
}

export class StateError extends Error {}

// ---- validation: every field the restore path reads, so a bad state is one clear line, never a crash ----

type Check = (v: unknown, at: string) => void;
const fail = (at: string, what: string): never => { throw new StateError(`CPR state is malformed: ${at} ${what}`); };
const int = (min: number, max: number): Check => (v, at) => {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(at, `is not an integer in [${min}, ${max}]`);
};
const u8 = int(0, 0xff), u16 = int(0, 0xffff), u32 = int(0, 0xffffffff), safe = int(0, Number.MAX_SAFE_INTEGER);
const big: Check = (v, at) => { if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) fail(at, 'is not a 64-bit unsigned bigint'); };
const sbig: Check = (v, at) => { if (typeof v !== 'bigint' || v < -(1n << 63n) || v >= 1n << 63n) fail(at, 'is not a 64-bit signed bigint'); };
const str: Check = (v, at) => { if (typeof v !== 'string') fail(at, 'is not a string'); };
const bool: Check = (v, at) => { if (typeof v !== 'boolean') fail(at, 'is not a boolean'); };
const buf = (len?: number): Check => (v, at) => {
  if (!Buffer.isBuffer(v) || (len !== undefined && v.length !== len)) fail(at, len === undefined ? 'is not bytes' : `is not ${len} bytes`);
};
const oneOf = (...xs: unknown[]): Check => (v, at) => { if (!xs.includes(v)) fail(at, `is not one of ${xs.join(', ')}`); };
const nullable = (c: Check): Check => (v, at) => { if (v !== null) c(v, at); };
const optional = (c: Check): Check => (v, at) => { if (v !== undefined) c(v, at); };
const list = (c: Check, min = 0, max = 1 << 16): Check => (v, at) => {
  if (!Array.isArray(v) || v.length < min || v.length > max) fail(at, `is not a list of ${min} to ${max}`);
  (v as unknown[]).forEach((x, i) => c(x, `${at}[${i}]`));
};
const obj = (fields: Record<string, Check>): Check => (v, at) => {
  if (!v || typeof v !== 'object' || Array.isArray(v) || Buffer.isBuffer(v)) fail(at, 'is not an object');
  for (const [k, c] of Object.entries(fields)) c((v as Record<string, unknown>)[k], `${at}.${k}`);
};
const record = (c: Check): Check => (v, at) => {
  if (!v || typeof v !== 'object' || Array.isArray(v)) fail(at, 'is not an object');
  for (const [k, x] of Object.entries(v as object)) c(x, `${at}.${k}`);
};
const fields = <K extends string>(names: readonly K[], c: Check): Record<K, Check> => Object.fromEntries(names.map((n) => [n, c])) as Record<K, Check>;

const accelPrivate = obj({ kind: oneOf('kvm', 'emu'), data: record((v, at) => { if (v !== null && !['number', 'bigint', 'string'].includes(typeof v) && !Buffer.isBuffer(v)) fail(at, 'is not a value'); }) });
const segment = obj({
  base: big, limit: u32, selector: u16,
  ...fields(['type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] satisfies (keyof Segment)[], u8),
});
const cpuState = obj({
  regs: obj(fields(GPR_NAMES, big)),
  segments: obj(fields(SEGMENT_NAMES, segment)),
  gdt: obj({ base: big, limit: u16 }), idt: obj({ base: big, limit: u16 }),
  ...fields(['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const, big),
  msrs: list(obj({ index: u32, value: big }), 0, 256),
  fpu: obj({ fcw: u16, fsw: u16, ftw: u8, fop: u16, fip: big, fdp: big, mxcsr: u32, st: buf(128), xmm: buf(256) }),
  lapic: buf(1024),
  mpState: oneOf('runnable', 'uninitialized', 'init-received', 'halted', 'sipi-received'),
  pendingInterrupt: nullable(int(0, 255)),
  accel: optional(accelPrivate),
});
const pic = obj(fields(['lastIrr', 'irr', 'imr', 'isr', 'priorityAdd', 'irqBase', 'readRegSelect', 'poll', 'specialMask', 'initState',
  'autoEoi', 'rotateOnAutoEoi', 'specialFullyNestedMode', 'init4', 'elcr', 'elcrMask'] satisfies (keyof PicState)[], u8));
const pitChannel = obj({
  count: u32, latchedCount: u16, countLoadTime: sbig,
  ...fields(['countLatched', 'statusLatched', 'status', 'readState', 'writeState', 'writeLatch', 'rwMode', 'mode', 'bcd', 'gate'] satisfies (keyof PitChannelState)[], u8),
});
const platform = obj({
  pic: list(pic, 2, 2),
  ioapic: obj({ base: safe, id: u32, ioregsel: u32, irr: u32, redirtbl: list(big, 24, 24) }),
  pit: obj({ channels: list(pitChannel, 3, 3), flags: u32 }),
  accel: optional(accelPrivate),
});
const config = obj({
  guest: str, memory: safe, smp: int(1, 4), serial: str, cmdline: str, qmp: nullable(str), logLevel: str,
  vdpa: list(str, 0, 8), accel: oneOf('auto', 'kvm', 'emu'),
});
const hex: Check = (v, at) => { if (typeof v !== 'string' || !/^[0-9a-f]{1,16}$/.test(v)) fail(at, 'is not a hex number'); };
const vdpaState = obj({
  index: int(0, 7), devicePath: str, gsi: u8, base: safe, deviceId: u32, deviceFeatures: hex, offered: hex, negotiated: hex,
  vqs: int(1, 64), queueMax: u16, configSize: u32, status: u8, reset: bool, bases: list(u16, 0, 64),
  mappings: list(obj({ iova: safe, size: safe, region: int(0, 7) }), 0, 8), path: oneOf('new-owner', 'fallback'),
  transport: obj({
    deviceFeaturesSel: u32, driverFeaturesSel: u32, driverFeatures: hex, queueSel: u32, status: u8,
    queues: list(obj({ num: u16, ready: bool, desc: hex, avail: hex, used: hex }), 0, 64),
  }),
});
const vmmState = obj({
  machine: obj({
    config, accel: oneOf('kvm', 'emu'), cpuModel: accelPrivate,
    memory: list(obj({ name: str, gpa: safe, size: safe }), 1, 8),
    vcpus: list(cpuState, 1, 4), platform, serial: list(int(-(2 ** 31), 2 ** 31 - 1), 0, 16),
  }),
  vdpa: list(vdpaState, 0, 8),
  daemon: optional(obj({ pid: int(1, 2 ** 31 - 1), dir: str, args: optional(list(str)), restarts: optional(safe), files: optional(list(str)) })),
  update: obj({
    n: safe, mode: oneOf('cpr-exec', 'cpr-transfer'), t: obj({ pauseStart: big, paused: big, requested: optional(big) }),
    history: list(obj({ n: safe, downtime: (v, at) => { if (typeof v !== 'number' || !Number.isFinite(v)) fail(at, 'is not a number'); }, path: str, phases: record((v, at) => { if (typeof v !== 'number') fail(at, 'is not a number'); }) }), 0, 64),
  }),
});

/** Checks a decoded state; throws StateError (one line) naming the first bad field. */
export function checkVmmState(v: unknown): VmmState {
  vmmState(v, 'state');
  const s = v as VmmState;
  if (s.machine.vcpus.length !== s.machine.config.smp) fail('state.machine.vcpus', `has ${s.machine.vcpus.length} vCPUs for smp ${s.machine.config.smp}`);
  s.machine.memory.forEach((m, i) => { if (m.size === 0 || m.size % 4096 !== 0) fail(`state.machine.memory[${i}].size`, 'is not a positive multiple of 4 KiB'); });
  s.vdpa.forEach((d, i) => d.mappings.forEach((m, j) => {
    if (m.region >= s.machine.memory.length) fail(`state.vdpa[${i}].mappings[${j}].region`, 'names no RAM region');
  }));
  return s;
}

/**
 * A state shaped like what a paused `counter` VM with one vdpa device saves: the codec's
 * warm-up input (cpr/envelope.ts) and the fuzzers' seed.
 */
export function sampleVmmState(opts: { smp?: number; memory?: number; vdpa?: boolean } = {}): VmmState {
  const smp = opts.smp ?? 1, memory = opts.memory ?? 256 * 2 ** 20;
  const seg = (selector: number, type: number, l: number): Segment => ({ base: 0n, limit: 0xffffffff, selector, type, present: 1, dpl: 0, db: l ? 0 : 1, s: 1, l, g: 1, avl: 0, unusable: 0 });
  const data = seg(0x10, 3, 0);
  const vcpu = (): CpuState => ({
    regs: Object.fromEntries(GPR_NAMES.map((n) => [n, n === 'rip' ? 0x100000n : n === 'rflags' ? 2n : 0n])) as CpuState['regs'],
    segments: { cs: seg(0x8, 0xb, 1), ds: data, es: data, fs: data, gs: data, ss: data, tr: { ...seg(0x18, 0xb, 0), s: 0, limit: 0x67 }, ldt: { ...data, unusable: 1 } },
    gdt: { base: 0x500n, limit: 31 }, idt: { base: 0n, limit: 0 },
    cr0: 0x80050033n, cr2: 0n, cr3: 0x10000n, cr4: 0x20n, cr8: 0n, efer: 0x500n, apicBase: 0xfee00900n,
    msrs: [0x174, 0x175, 0x176, 0xc0000081, 0xc0000082, 0xc0000084, 0xc0000102, 0x277, 0x1a0, 0x10].map((index, i) => ({ index, value: BigInt(i * 0x1000) })),
    fpu: { fcw: 0x37f, fsw: 0, ftw: 0, fop: 0, fip: 0n, fdp: 0n, mxcsr: 0x1f80, st: Buffer.alloc(128), xmm: Buffer.alloc(256) },
    lapic: Buffer.alloc(1024, 2), mpState: 'runnable', pendingInterrupt: null,
    accel: { kind: 'kvm', data: { xsave: Buffer.alloc(4096), events: Buffer.alloc(64) } },
  });
  const picState = (): PicState => ({ lastIrr: 0, irr: 0, imr: 0xff, isr: 0, priorityAdd: 0, irqBase: 8, readRegSelect: 0, poll: 0, specialMask: 0, initState: 0, autoEoi: 0, rotateOnAutoEoi: 0, specialFullyNestedMode: 0, init4: 1, elcr: 0, elcrMask: 0xf8 });
  const channel = (): PitChannelState => ({ count: 65536, latchedCount: 0, countLatched: 0, statusLatched: 0, status: 0, readState: 3, writeState: 3, writeLatch: 0, rwMode: 3, mode: 3, bcd: 0, gate: 1, countLoadTime: 1000n });
  const layout = memory > 3 * 2 ** 30
    ? [{ name: 'ram-low', gpa: 0, size: 3 * 2 ** 30 }, { name: 'ram-high', gpa: 4 * 2 ** 30, size: memory - 3 * 2 ** 30 }]
    : [{ name: 'ram-low', gpa: 0, size: memory }];
  const state: VmmState = {
    machine: {
      config: { guest: '/opt/minivmm/dist/guests/counter.elf', memory, smp, serial: 'stdio', cmdline: 'iters=5000', qmp: '/tmp/minivmm-fuzz/qmp.sock', logLevel: 'warn', vdpa: opts.vdpa ? ['sim:net,va'] : [], accel: 'auto' },
      accel: 'kvm', cpuModel: { kind: 'kvm', data: { cpuid: Buffer.alloc(8 + 40 * 60, 3) } },
      memory: layout,
      vcpus: Array.from({ length: smp }, vcpu),
      platform: {
        pic: [picState(), picState()],
        ioapic: { base: 0xfec00000, id: 0, ioregsel: 0, irr: 0, redirtbl: Array.from({ length: 24 }, () => 0x10000n) },
        pit: { channels: [channel(), channel(), channel()], flags: 0 },
      },
      serial: [0, 0, 3, 0, 12, 0, 0, 0],
    },
    vdpa: [],
    update: { n: 3, mode: 'cpr-exec', t: { pauseStart: 1000n, paused: 2000n }, history: [{ n: 1, downtime: 12.5, path: 'none', phases: { pause: 0.1, save: 0.4 } }] },
  };
  if (opts.vdpa) {
    const q = (ready: boolean) => ({ num: ready ? 256 : 0, ready, desc: '0', avail: '0', used: '0' });
    state.vdpa = [{
      index: 0, devicePath: '/tmp/minivmm-vdpa-x/vhost-vdpa-0', gsi: 16, base: 0xd0000000, deviceId: 1, deviceFeatures: '308830028', offered: '7fe', negotiated: '6',
      vqs: 3, queueMax: 256, configSize: 24, status: 15, reset: false, bases: [0, 0, 0], mappings: [{ iova: 0, size: layout[0].size, region: 0 }], path: 'new-owner',
      transport: { deviceFeaturesSel: 0, driverFeaturesSel: 0, driverFeatures: '100000000', queueSel: 0, status: 15, queues: [q(true), q(true), q(false)] },
    }];
    state.daemon = { pid: 12345, dir: '/tmp/minivmm-vdpa-x' };
  }
  return state;
}
