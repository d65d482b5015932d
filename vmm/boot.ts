// Direct 64-bit boot: load an ELF64 toy guest, build a GDT and identity-mapped page tables, write
// the boot-info structure, and give the vCPU long-mode registers. Layout of low memory:
//   0x0500 GDT · 0x6000 boot info · 0x10000 PML4, 0x11000 PDPT, 0x12000.. PDs · 0x80000 initial stack
//   0x100000 and up: the guest image.
import { readFileSync, statSync } from 'node:fs';
import { GuestMemory, GiB } from '../src/memory.js';
import type { Vcpu, Segment, CpuState, Gprs } from '../src/accel/index.js';

export const GDT_ADDR = 0x500, BOOT_INFO_ADDR = 0x6000, PML4_ADDR = 0x10000, INITIAL_RSP = 0x80000, IMAGE_MIN = 0x100000;
const PAGE_TABLES_END = 0x80000;

/** Boot info (little endian, 608 bytes): see README "Boot-info structure". */
export const BOOT_INFO = { magic: 0x424d564d, version: 1, size: 608, maxRegions: 8, maxDevices: 8, cmdlineLen: 256 } as const;
export interface BootDevice { type: number; irq: number; base: number; size: number }

export class GuestImageError extends Error {}
const MAX_IMAGE = 256 * 2 ** 20;

export interface LoadedImage { entry: number; segments: { paddr: number; memsz: number }[] }

/** Validates and loads an ELF64 x86-64 executable into guest RAM. Errors are one line. */
export function loadElf(mem: GuestMemory, path: string): LoadedImage {
  let img: Buffer;
  try {
    // Only a regular file of sane size: a FIFO would block forever, /dev/zero never ends.
    const st = statSync(path);
    if (!st.isFile()) throw new GuestImageError(`guest image ${path}: not a regular file`);
    if (st.size > MAX_IMAGE) throw new GuestImageError(`guest image ${path}: larger than ${MAX_IMAGE / 2 ** 20} MiB`);
    img = readFileSync(path);
  } catch (e) {
    if (e instanceof GuestImageError) throw e;
    throw new GuestImageError(`cannot read guest image ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const bad = (why: string) => new GuestImageError(`guest image ${path}: ${why}`);
  if (img.length < 64 || img.readUInt32BE(0) !== 0x7f454c46) throw bad('not an ELF file');
  if (img[4] !== 2 || img[5] !== 1) throw bad('not a little-endian ELF64 file');
  if (img.readUInt16LE(18) !== 62) throw bad('not an x86-64 executable');
  if (img.readUInt16LE(16) !== 2) throw bad('not an executable (ET_EXEC) image');
  const entry = Number(img.readBigUInt64LE(24)), phoff = Number(img.readBigUInt64LE(32));
  const phentsize = img.readUInt16LE(54), phnum = img.readUInt16LE(56);
  if (phentsize !== 56 || phnum === 0 || phnum > 64 || phoff + phnum * 56 > img.length) throw bad('bad program header table');
  const lowRam = mem.regions[0].size;
  const segments: LoadedImage['segments'] = [];
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * 56;
    if (img.readUInt32LE(ph) !== 1) continue; // PT_LOAD only
    const offset = Number(img.readBigUInt64LE(ph + 8)), paddr = Number(img.readBigUInt64LE(ph + 24));
    const filesz = Number(img.readBigUInt64LE(ph + 32)), memsz = Number(img.readBigUInt64LE(ph + 40));
    if (filesz > memsz || offset + filesz > img.length) throw bad(`segment ${i} extends past the file`);
    if (paddr < IMAGE_MIN || paddr + memsz > Math.min(lowRam, GiB)) {
      throw bad(`segment ${i} at 0x${paddr.toString(16)}+0x${memsz.toString(16)} is outside [1 MiB, ${Math.min(lowRam, GiB) / 2 ** 20} MiB)`);
    }
    const dst = mem.view(paddr, memsz);
    img.copy(dst, 0, offset, offset + filesz);
    dst.fill(0, filesz);
    segments.push({ paddr, memsz });
  }
  if (segments.length === 0) throw bad('no loadable segments');
  if (!segments.some((s) => entry >= s.paddr && entry < s.paddr + s.memsz)) throw bad(`entry point 0x${entry.toString(16)} is not in a loaded segment`);
  return { entry, segments };
}

/** Identity-map [0, max(4 GiB, top of RAM)) with 2 MiB pages. */
function buildPageTables(mem: GuestMemory): void {
  const gigs = Math.ceil(Math.max(4 * GiB, mem.top) / GiB);
  const pdBase = PML4_ADDR + 0x2000;
  if (pdBase + gigs * 0x1000 > PAGE_TABLES_END) throw new Error(`RAM too large for the boot page tables (${gigs} GiB mapped)`);
  const pml4 = mem.view(PML4_ADDR, 0x1000), pdpt = mem.view(PML4_ADDR + 0x1000, 0x1000);
  pml4.fill(0); pdpt.fill(0);
  pml4.writeBigUInt64LE(BigInt(PML4_ADDR + 0x1000) | 0x3n, 0); // present, writable
  for (let g = 0; g < gigs; g++) {
    pdpt.writeBigUInt64LE(BigInt(pdBase + g * 0x1000) | 0x3n, g * 8);
    const pd = mem.view(pdBase + g * 0x1000, 0x1000);
    for (let i = 0; i < 512; i++) pd.writeBigUInt64LE(BigInt(g * GiB + i * 2 ** 21) | 0x83n, i * 8); // present, writable, 2 MiB
  }
}

function writeBootInfo(mem: GuestMemory, cpus: number, devices: BootDevice[], cmdline: string, tscKhz: number): void {
  const b = Buffer.alloc(BOOT_INFO.size);
  b.writeUInt32LE(BOOT_INFO.magic, 0); b.writeUInt32LE(BOOT_INFO.version, 4);
  b.writeBigUInt64LE(BigInt(mem.size), 8);
  b.writeUInt32LE(mem.regions.length, 16); b.writeUInt32LE(devices.length, 20); b.writeUInt32LE(cpus, 24); b.writeUInt32LE(tscKhz, 28);
  mem.regions.forEach((r, i) => { b.writeBigUInt64LE(BigInt(r.gpa), 32 + i * 16); b.writeBigUInt64LE(BigInt(r.size), 40 + i * 16); });
  if (devices.length > BOOT_INFO.maxDevices) throw new Error(`at most ${BOOT_INFO.maxDevices} devices`);
  devices.forEach((d, i) => {
    const o = 160 + i * 24;
    b.writeUInt32LE(d.type, o); b.writeUInt32LE(d.irq, o + 4); b.writeBigUInt64LE(BigInt(d.base), o + 8); b.writeBigUInt64LE(BigInt(d.size), o + 16);
  });
  const cmd = Buffer.from(cmdline);
  if (cmd.length >= BOOT_INFO.cmdlineLen) throw new Error(`guest command line longer than ${BOOT_INFO.cmdlineLen - 1} bytes`);
  cmd.copy(b, 352);
  mem.write(BOOT_INFO_ADDR, b);
}

const CODE64: Segment = { base: 0n, limit: 0xffffffff, selector: 0x8, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0 };
const DATA: Segment = { base: 0n, limit: 0xffffffff, selector: 0x10, type: 0x3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0 };
const TSS: Segment = { base: 0n, limit: 0x67, selector: 0x18, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };

/** Prepares memory for a fresh boot: page tables, GDT, boot info. Returns the entry point. */
export function prepareBoot(mem: GuestMemory, imagePath: string, cpus: number, devices: BootDevice[], cmdline: string, tscKhz: number): number {
  const { entry } = loadElf(mem, imagePath);
  buildPageTables(mem);
  const gdt = mem.view(GDT_ADDR, 32);
  gdt.writeBigUInt64LE(0n, 0);
  gdt.writeBigUInt64LE(0x00af9b000000ffffn, 8); // 64-bit code
  gdt.writeBigUInt64LE(0x00cf93000000ffffn, 16); // data
  gdt.writeBigUInt64LE(0x00008b0000000067n, 24); // busy 64-bit TSS (KVM needs a usable TR)
  writeBootInfo(mem, cpus, devices, cmdline, tscKhz);
  return entry;
}

/** Puts vCPU `index` in 64-bit long mode at `entry` (the boot contract in the README). Secondary vCPUs park in the guest's own way (same entry, RSI = index). */
export function setupLongMode(vcpu: Vcpu, entry: number, index: number): void {
  const s = vcpu.getState();
  const { regs, ...entryState } = longModeEntryState(entry, index);
  const zero = Object.fromEntries(Object.keys(s.regs).map((k) => [k, 0n])) as Gprs;
  vcpu.setState({ ...s, ...entryState, regs: { ...zero, ...regs } });
}

/** The long-mode entry of vCPU `index` as neutral state, merged into the vCPU's own by setupLongMode. */
function longModeEntryState(entry: number, index: number): Pick<CpuState, 'segments' | 'gdt' | 'idt' | 'cr0' | 'cr3' | 'cr4' | 'efer'> & { regs: Partial<Gprs> } {
  return {
    segments: {
      cs: CODE64, ds: DATA, es: DATA, fs: DATA, gs: DATA, ss: DATA, tr: TSS,
      ldt: { base: 0n, limit: 0, selector: 0, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 },
    },
    gdt: { base: BigInt(GDT_ADDR), limit: 31 }, idt: { base: 0n, limit: 0 },
    cr0: 0x80050033n, // PG | AM | WP | NE | ET | MP | PE
    cr3: BigInt(PML4_ADDR), cr4: 0x20n /* PAE */, efer: 0x500n /* LME | LMA */,
    regs: { rip: BigInt(entry), rflags: 0x2n, rsp: BigInt(INITIAL_RSP - index * 0x1000), rdi: BigInt(BOOT_INFO_ADDR), rsi: BigInt(index) },
  };
}
