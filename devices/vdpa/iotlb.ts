// vhost's side of the IOTLB: per address space the entries {start, last, addr, perm, file+offset}
// (an interval list with the kernel's overlap rule), the pinned-page accounting per address space
// (mm->pinned_vm, shown as VmPin) and the mapping walks behind UPDATE (va: /proc/PID/maps; pa:
// /proc/PID/map_files mapped MAP_SHARED into the daemon and mlocked).
import { closeSync, openSync, readFileSync, constants as fsc } from 'node:fs';
import { mlock, mmap, munmap, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../src/libc.js';
import type { MapView } from './dma.js';
import { ownerKey, type OwnerId } from './owner.js';
import { fsMagic, sleepMs } from './sys.js';

export const U64_MAX = (1n << 64n) - 1n;
export const PAGE = 4096;

export interface Entry {
  start: bigint; last: bigint; // iova, inclusive
  addr: bigint; // va: user VA (REMAP replaces it); pa: the daemon's mapping ("physical" address)
  perm: number;
  file?: { path: string; offset: bigint }; // va: the kept file reference
  pin?: { addr: number; len: number; pages: number }; // pa: the daemon's mlocked mapping
}

export class AddressSpace {
  entries: Entry[] = [];
  /** The parent's view: what the last set_map pushed (or nothing since a clean-map reset). */
  view: MapView[] = [];
  constructor(readonly asid: number) {}
  /** Entries intersecting [start, last] by the interval tree's rule (start <= e.last && e.start <= last). */
  intersecting(start: bigint, last: bigint): Entry[] {
    return this.entries.filter((e) => e.start <= last && start <= e.last);
  }
  add(e: Entry): void { this.entries.push(e); this.entries.sort((a, b) => (a.start < b.start ? -1 : 1)); }
  remove(e: Entry): void { this.entries = this.entries.filter((x) => x !== e); }
  /** set_map: push the whole address space to the parent. */
  push(): void {
    this.view = this.entries.map((e) => ({
      start: Number(e.start), last: Number(e.last), addr: e.pin ? e.pin.addr : Number(e.addr), perm: e.perm,
    }));
  }
}

/** mm->pinned_vm of every address space the daemon has seen pin (global, like the kernel's). */
export class PinLedger {
  private readonly pages = new Map<string, { owner: OwnerId; pages: number }>();
  get(o: OwnerId): number { return this.pages.get(ownerKey(o))?.pages ?? 0; }
  add(o: OwnerId, n: number): void {
    const k = ownerKey(o), cur = this.pages.get(k);
    const v = (cur?.pages ?? 0) + n;
    if (v === 0) this.pages.delete(k); else this.pages.set(k, { owner: o, pages: v });
  }
  all(): { pid: number; fingerprint: string; pages: number }[] {
    return [...this.pages.values()].map((x) => ({ pid: x.owner.pid, fingerprint: x.owner.fingerprint, pages: x.pages }));
  }
}

export interface Vma { start: number; end: number; read: boolean; write: boolean; shared: boolean; offset: number; inode: number; path: string }

/** The owner's mappings, in address order. */
export function readMaps(pid: number): Vma[] {
  const out: Vma[] = [];
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ (\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const [r, w, , sh] = m[3];
    out.push({ start: parseInt(m[1], 16), end: parseInt(m[2], 16), read: r === 'r', write: w === 'w', shared: sh === 's', offset: parseInt(m[4], 16), inode: Number(m[5]), path: m[6] });
  }
  return out;
}
/** find_vma: the first mapping ending above addr. */
export const findVma = (maps: Vma[], addr: number): Vma | undefined => maps.find((v) => v.end > addr);
/** file-backed, shared (not anonymous private, not a special [..] area). */
export const fileShared = (v: Vma): boolean => v.shared && v.inode !== 0 && !v.path.startsWith('[');

/** File systems whose shared mappings need no dirty tracking: shmem (memfd, tmpfs, shared anonymous) and hugetlbfs. */
const NO_DIRTY_TRACKING = new Set([0x01021994 /* TMPFS_MAGIC */, 0x958458f6 /* HUGETLBFS_MAGIC */]);

/**
 * Pin `len` bytes of the owner's memory at `uaddr` (page aligned) the PA way: map the file behind
 * the mapping into the daemon and mlock it. Returns the pieces (one per mapping) or throws.
 * `writable` is pin_user_pages' FOLL_WRITE (the IOTLB permission has WO): as the kernel's
 * check_vma_flags, it needs a mapping the owner may write (VM_WRITE) and one that needs no dirty
 * tracking (a long-term writable pin of a disk file is refused); a read pin needs VM_READ. The
 * daemon maps the file with the owner's own rights, never root's: read-only unless `writable`.
 */
export function pinRange(pid: number, uaddr: number, len: number, writable: boolean, costMsPerGib: number): { uaddr: number; len: number; pin: NonNullable<Entry['pin']> }[] {
  const maps = readMaps(pid);
  const pieces: { uaddr: number; len: number; pin: NonNullable<Entry['pin']> }[] = [];
  try {
    let at = uaddr;
    const end = uaddr + len;
    while (at < end) {
      const v = maps.find((x) => x.start <= at && at < x.end);
      const where = `at 0x${at.toString(16)}`;
      if (!v || !fileShared(v)) throw new Error(`no pinnable file-backed shared mapping ${where}`);
      if (writable ? !v.write : !v.read) throw new Error(`the owner's mapping ${where} is not ${writable ? 'writable' : 'readable'}`);
      const n = Math.min(end, v.end) - at;
      const path = `/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`;
      const fd = openSync(path, writable ? fsc.O_RDWR : fsc.O_RDONLY);
      try {
        if (writable && !NO_DIRTY_TRACKING.has(fsMagic(fd))) throw new Error(`the mapping ${where} needs dirty tracking (not shmem or hugetlbfs): no long-term writable pin`);
        const addr = mmap(n, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, v.offset + (at - v.start));
        try { mlock(addr, n); } catch (e) { munmap(addr, n); throw e; }
        pieces.push({ uaddr: at, len: n, pin: { addr, len: n, pages: n / PAGE } });
      } finally { closeSync(fd); }
      at += n;
    }
  } catch (e) {
    for (const p of pieces) unpin(p.pin);
    throw e;
  }
  sleepMs((costMsPerGib * len) / 2 ** 30);
  return pieces;
}

export function unpin(pin: NonNullable<Entry['pin']>): void {
  try { munmap(pin.addr, pin.len); } catch { /* already gone */ }
}
