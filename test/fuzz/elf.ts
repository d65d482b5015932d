// Mutations of a built guest ELF: header fields, program headers, segment bytes, size.
import { edgeU32, edgeU64, type Rng } from './prng.js';

/** ELF64 header fields: [offset, size]. */
const EHDR: [string, number, number][] = [
  ['ei_class', 4, 1], ['ei_data', 5, 1], ['ei_version', 6, 1], ['e_type', 16, 2], ['e_machine', 18, 2], ['e_version', 20, 4],
  ['e_entry', 24, 8], ['e_phoff', 32, 8], ['e_shoff', 40, 8], ['e_flags', 48, 4], ['e_ehsize', 52, 2], ['e_phentsize', 54, 2],
  ['e_phnum', 56, 2], ['e_shentsize', 58, 2], ['e_shnum', 60, 2], ['e_shstrndx', 62, 2], ['magic', 0, 4],
];
/** ELF64 program header fields, relative to the entry. */
const PHDR: [string, number, number][] = [
  ['p_type', 0, 4], ['p_flags', 4, 4], ['p_offset', 8, 8], ['p_vaddr', 16, 8], ['p_paddr', 24, 8], ['p_filesz', 32, 8], ['p_memsz', 40, 8], ['p_align', 48, 8],
];

function writeField(b: Buffer, at: number, size: number, r: Rng, near?: bigint): void {
  if (at + size > b.length) return;
  if (size === 8) {
    const cur = b.readBigUInt64LE(at);
    const v = r.pick<() => bigint>([
      () => edgeU64(r), () => (cur + BigInt(r.int(0x2000)) - 0x1000n) & ((1n << 64n) - 1n), () => cur << BigInt(1 + r.int(8)),
      () => BigInt(r.pick([0x100000, 0xfffff, 0x3fff000, 0x4000000, 0x3ffffff, 64 * 2 ** 20 - 1, 2 ** 30])), () => near ?? 0n,
    ])();
    b.writeBigUInt64LE(v & ((1n << 64n) - 1n), at);
  } else if (size === 4) b.writeUInt32LE(r.bool(0.3) ? r.pick([0, 1, 2, 3, 4, 6, 0x6474e551, 0x70000000]) : edgeU32(r), at);
  else if (size === 2) b.writeUInt16LE(r.bool(0.5) ? r.pick([0, 1, 2, 3, 56, 55, 57, 62, 64, 65, 0xffff]) : r.int(0x10000), at);
  else b[at] = r.bool(0.5) ? r.pick([0, 1, 2, 3, 0xff]) : r.int(256);
}

export type ElfMutation = 'ehdr' | 'phdr' | 'segment' | 'truncate' | 'extend' | 'phtable' | 'bytes';
export const ELF_MUTATIONS: ElfMutation[] = ['ehdr', 'ehdr', 'phdr', 'phdr', 'phdr', 'segment', 'truncate', 'extend', 'phtable', 'bytes'];

export function mutateElf(r: Rng, orig: Buffer, kind: ElfMutation = r.pick(ELF_MUTATIONS)): { kind: ElfMutation; what: string; image: Buffer } {
  let b = Buffer.from(orig);
  const phoff = Number(orig.readBigUInt64LE(32)), phnum = orig.readUInt16LE(56);
  const what: string[] = [];
  const n = 1 + r.int(3);
  for (let k = 0; k < n; k++) {
    switch (kind) {
      case 'ehdr': { const [name, at, size] = r.pick(EHDR); writeField(b, at, size, r); what.push(name); break; }
      case 'phdr': {
        const i = r.int(phnum), [name, rel, size] = r.pick(PHDR);
        writeField(b, phoff + 56 * i + rel, size, r, orig.readBigUInt64LE(phoff + 56 * i + 24));
        what.push(`ph${i}.${name}`); break;
      }
      case 'segment': { // corrupt loaded bytes (code and data): the guest may then run, fault or exit
        const i = r.int(phnum), off = Number(orig.readBigUInt64LE(phoff + 56 * i + 8)), fsz = Number(orig.readBigUInt64LE(phoff + 56 * i + 32));
        if (fsz > 0) { const at = off + r.int(fsz); const len = Math.min(1 + r.int(16), b.length - at); r.bytes(len).copy(b, at); what.push(`seg${i}@${at}+${len}`); }
        break;
      }
      case 'truncate': { const cut = r.int(b.length); b = b.subarray(0, cut); what.push(`cut ${cut}`); break; }
      case 'extend': { b = Buffer.concat([b, r.bytes(1 + r.int(4096))]); what.push('extend'); break; }
      case 'phtable': { // the program header table moved, duplicated or pointing anywhere
        const choice = r.int(3);
        if (choice === 0) { b.writeBigUInt64LE(BigInt(b.length - r.int(120)), 32); what.push('phoff near end'); }
        else if (choice === 1) { b.writeUInt16LE(1 + r.int(70), 56); what.push(`phnum ${b.readUInt16LE(56)}`); }
        else { b = Buffer.concat([b, b.subarray(phoff, phoff + 56 * phnum), b.subarray(phoff, phoff + 56 * phnum)]); b.writeBigUInt64LE(BigInt(orig.length), 32); b.writeUInt16LE(phnum * 2, 56); what.push('phdrs duplicated'); }
        break;
      }
      default: { const at = r.int(Math.min(b.length, 64 + 56 * phnum + 64)); b[at] = r.int(256); what.push(`byte ${at}`); }
    }
  }
  return { kind, what: what.join(','), image: b };
}
