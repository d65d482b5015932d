// Guest RAM: memfd-backed, mapped MAP_SHARED, so a new process (after exec) maps the very same
// pages. Views are windows made on demand (bufferAt), never one giant Buffer.
import {
  memfdCreate, ftruncate, mmap, munmap, bufferAt, MFD_CLOEXEC, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_NORESERVE,
} from './libc.js';
import { cprSaveFd } from './cpr-fds.js';

export const GiB = 2 ** 30, MiB = 2 ** 20;
/** RAM below the 32-bit MMIO hole ends here; the rest starts at 4 GiB. */
export const LOW_RAM_END = 3 * GiB;
export const HIGH_RAM_BASE = 4 * GiB;

export interface RamRegion {
  /** Stable name of the region's memfd (fds are kept by name across exec, never by number). */
  name: string;
  gpa: number;
  size: number;
  fd: number;
  hostAddr: number;
}

/** The guest-physical layout for `size` bytes of RAM: [0, 3G) then [4G, ...). */
export function ramLayout(size: number): { name: string; gpa: number; size: number }[] {
  const low = Math.min(size, LOW_RAM_END);
  const out = [{ name: 'ram-low', gpa: 0, size: low }];
  if (size > low) out.push({ name: 'ram-high', gpa: HIGH_RAM_BASE, size: size - low });
  return out;
}

export class GuestMemory {
  /** Each region's memfd is kept across a live update as ('ram', index): the guest's RAM is never copied. */
  private constructor(readonly regions: RamRegion[]) {
    regions.forEach((r, i) => cprSaveFd('ram', i, r.fd));
  }

  /** Fresh RAM: one memfd per region (sparse until touched). */
  static create(size: number): GuestMemory {
    return new GuestMemory(ramLayout(size).map((r) => {
      const fd = memfdCreate(`minivmm-${r.name}`, MFD_CLOEXEC);
      ftruncate(fd, r.size);
      return { ...r, fd, hostAddr: GuestMemory.map(fd, r.size) };
    }));
  }

  /** RAM whose memfds were inherited (after exec): map them again, at new host addresses. */
  static adopt(regions: { name: string; gpa: number; size: number; fd: number }[]): GuestMemory {
    return new GuestMemory(regions.map((r) => ({ ...r, hostAddr: GuestMemory.map(r.fd, r.size) })));
  }

  private static map(fd: number, size: number): number {
    return mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  }

  get size(): number { return this.regions.reduce((s, r) => s + r.size, 0); }
  /** Highest guest-physical address + 1. */
  get top(): number { return Math.max(...this.regions.map((r) => r.gpa + r.size)); }

  /** Host address of [gpa, gpa+len), which must lie in one region. */
  hostAddress(gpa: number, len: number): number {
    for (const r of this.regions) {
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.size) return r.hostAddr + (gpa - r.gpa);
    }
    throw new RangeError(`guest address 0x${gpa.toString(16)}+0x${len.toString(16)} is not in RAM`);
  }

  /** A Buffer aliasing guest RAM (no copy). */
  view(gpa: number, len: number): Buffer { return bufferAt(this.hostAddress(gpa, len), len); }

  write(gpa: number, data: Buffer): void { data.copy(this.view(gpa, data.length)); }

  unmap(): void { for (const r of this.regions) munmap(r.hostAddr, r.size); }
}

/**
 * Walk x86-64 4-level page tables (CR3) to translate a guest-virtual address; used to fetch the
 * instruction bytes of a failed emulation. Returns null when unmapped.
 */
export function translate(read64: (gpa: number) => bigint, cr3: bigint, va: bigint): number | null {
  let table = cr3 & 0x000ffffffffff000n;
  const shifts = [39n, 30n, 21n, 12n];
  for (let level = 0; level < 4; level++) {
    const idx = (va >> shifts[level]) & 0x1ffn;
    const entry = read64(Number(table + idx * 8n));
    if ((entry & 1n) === 0n) return null;
    const isLeaf = level === 3 || (level > 0 && (entry & 0x80n) !== 0n);
    if (isLeaf) {
      const mask = (1n << shifts[level]) - 1n;
      return Number((entry & 0x000ffffffffff000n & ~mask) | (va & mask));
    }
    table = entry & 0x000ffffffffff000n;
  }
  return null;
}
