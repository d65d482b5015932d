// Every struct offset, size, ioctl number and flag written by hand in the TypeScript, checked at
// build time against this system's kernel headers: the compiled constants are turned into C
// `_Static_assert`s and compiled with gcc (a mismatch fails `npm install`, naming the field).
// The two ioctls and feature bits of the unmerged live-update series have no header to check.
// A name these headers lack (a macro or an enum constant newer than them) leaves its check out,
// reported as unchecked: the build goes on with older headers.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dist = new URL('../dist/', import.meta.url);
const kvm = await import(new URL('src/kvm.js', dist).href);
const accel = await import(new URL('src/accel/kvm.js', dist).href);
const vhost = await import(new URL('src/vhost.js', dist).href);
const fuse = await import(new URL('devices/vdpa/fuse.js', dist).href);
const vring = await import(new URL('devices/vdpa/virtqueue.js', dist).href);
const net = await import(new URL('devices/vdpa/net.js', dist).href);
const blk = await import(new URL('devices/vdpa/blk.js', dist).href);
const mmio = await import(new URL('devices/virtio-mmio.js', dist).href);

/** [C expression, the TypeScript value, a name the check needs beyond those in the expression] */
const checks = [];
const eq = (c, ts, needs) => checks.push([c, ts, needs]);
/** A table of constants: `${prefix}${key}`; `mask`: the values are bit masks of bit numbers. */
const consts = (table, prefix, mask = false) => {
  for (const [k, v] of Object.entries(table)) eq(mask ? `(1ULL << ${prefix}${k})` : `${prefix}${k}`, v);
};
/** A struct table (offsets by C field name, `sizeof`): FUSE_IN_HEADER is struct fuse_in_header. */
const isStruct = (v) => v && typeof v === 'object' && Object.keys(v).every((k) => /^[a-z_][a-z0-9_]*$/.test(k));
/** Checks whose struct grew after these headers: the name that came with the growth. */
const grew = { 'sizeof(struct virtio_blk_config)': 'VIRTIO_BLK_F_ZONED' }; // the zoned fields (6.3) end its 96 bytes
const structs = (mod) => {
  for (const [name, t] of Object.entries(mod)) {
    if (!isStruct(t)) continue;
    const s = `struct ${name.toLowerCase()}`;
    for (const [k, v] of Object.entries(t)) {
      const c = k === 'sizeof' ? `sizeof(${s})` : `offsetof(${s}, ${k})`;
      eq(c, v, grew[c]);
    }
  }
};
const snake = (s) => s.replace(/[A-Z]/g, (m) => `_${m.toLowerCase()}`);

// ---- KVM (include/uapi/linux/kvm.h, asm/kvm.h) ----
const structOf = {
  regs: 'kvm_regs', sregs: 'kvm_sregs', fpu: 'kvm_fpu', lapic: 'kvm_lapic_state', xsave: 'kvm_xsave', irqchip: 'kvm_irqchip',
  pitState2: 'kvm_pit_state2', vcpuEvents: 'kvm_vcpu_events', mpState: 'kvm_mp_state', memoryRegion: 'kvm_userspace_memory_region',
  irqfd: 'kvm_irqfd', ioeventfd: 'kvm_ioeventfd', pitConfig: 'kvm_pit_config', msrEntry: 'kvm_msr_entry', cpuidEntry: 'kvm_cpuid_entry2',
};
for (const [k, v] of Object.entries(kvm.SIZE)) eq(`sizeof(struct ${structOf[k]})`, v);
for (const [k, v] of Object.entries(kvm.KVM)) eq(`KVM_${k}`, v);
for (const [k, v] of Object.entries(kvm.CAP)) eq(`KVM_CAP_${k}`, v);
for (const [k, v] of Object.entries(kvm.EXIT)) eq(`KVM_EXIT_${k}`, v);
for (const [k, v] of Object.entries(kvm.IOEVENTFD_FLAG)) eq(`KVM_IOEVENTFD_FLAG_${k}`, v);
eq('KVM_IRQCHIP_PIC_MASTER', kvm.PIC_MASTER); eq('KVM_IRQCHIP_PIC_SLAVE', kvm.PIC_SLAVE); eq('KVM_IRQCHIP_IOAPIC', kvm.IOAPIC);
const R = kvm.RUN;
eq('offsetof(struct kvm_run, immediate_exit)', R.immediateExit); eq('offsetof(struct kvm_run, exit_reason)', R.exitReason);
for (const [k, v] of Object.entries(R.io)) eq(`offsetof(struct kvm_run, io.${k === 'dataOffset' ? 'data_offset' : k})`, v);
eq('offsetof(struct kvm_run, mmio.phys_addr)', R.mmio.physAddr); eq('offsetof(struct kvm_run, mmio.data)', R.mmio.data);
eq('offsetof(struct kvm_run, mmio.len)', R.mmio.len); eq('offsetof(struct kvm_run, mmio.is_write)', R.mmio.isWrite);
eq('offsetof(struct kvm_run, internal.suberror)', R.internal.suberror); eq('offsetof(struct kvm_run, internal.ndata)', R.internal.ndata);
eq('offsetof(struct kvm_run, internal.data)', R.internal.data);
eq('offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason)', R.failEntry.reason);
eq('offsetof(struct kvm_run, system_event.type)', R.systemEvent.type);
for (const [k, v] of Object.entries(kvm.SREGS)) eq(`offsetof(struct kvm_sregs, ${k === 'apicBase' ? 'apic_base' : k === 'interruptBitmap' ? 'interrupt_bitmap' : k})`, v);
eq('sizeof(struct kvm_segment)', 24); eq('sizeof(struct kvm_dtable)', 16);
accel.SEG_FLAGS.forEach((f, i) => eq(`offsetof(struct kvm_segment, ${f})`, 14 + i));
const fpu = { st: 'fpr', fcw: 'fcw', fsw: 'fsw', ftw: 'ftwx', fop: 'last_opcode', fip: 'last_ip', fdp: 'last_dp', xmm: 'xmm', mxcsr: 'mxcsr' };
for (const [k, v] of Object.entries(accel.FPU)) eq(`offsetof(struct kvm_fpu, ${fpu[k]})`, v);
eq('offsetof(struct kvm_irqchip, chip)', accel.IRQCHIP_DATA);
accel.PIC_FIELDS.forEach((f, i) => eq(`offsetof(struct kvm_pic_state, ${snake(f)})`, i));
eq('sizeof(struct kvm_pic_state)', accel.PIC_FIELDS.length);
const ioapic = { base: 'base_address', ioregsel: 'ioregsel', id: 'id', irr: 'irr', redirtbl: 'redirtbl' };
for (const [k, v] of Object.entries(accel.IOAPIC_OFF)) eq(`offsetof(struct kvm_ioapic_state, ${ioapic[k]})`, v);
eq('KVM_IOAPIC_NUM_PINS', 24);
eq('sizeof(struct kvm_pit_channel_state)', accel.PIT_CHANNEL); eq('offsetof(struct kvm_pit_state2, flags)', accel.PIT_FLAGS);
eq('offsetof(struct kvm_pit_channel_state, latched_count)', 4); eq('offsetof(struct kvm_pit_channel_state, count_load_time)', 16);
accel.PIT_BYTES.forEach((f, i) => eq(`offsetof(struct kvm_pit_channel_state, ${snake(f)})`, 6 + i));

// ---- vhost / vhost-vdpa (include/uapi/linux/vhost.h, vhost_types.h) ----
const unmerged = new Set(['NEW_OWNER']);
for (const [k, v] of Object.entries(vhost.VHOST)) if (!unmerged.has(k)) eq(`VHOST_${k}`, v);
for (const [k, v] of Object.entries(vhost.BACKEND_F)) if (k !== 'NEW_OWNER' && k !== 'IOTLB_REMAP') eq(`(1ULL << VHOST_BACKEND_F_${k})`, Number(v));
for (const [k, v] of Object.entries(vhost.IOTLB)) if (k !== 'REMAP') eq(`VHOST_IOTLB_${k}`, v);
for (const [k, v] of Object.entries(vhost.IOTLB_PERM)) eq(`VHOST_ACCESS_${k}`, v);
eq('VHOST_IOTLB_MSG', vhost.VHOST_IOTLB_MSG); eq('VHOST_IOTLB_MSG_V2', vhost.VHOST_IOTLB_MSG_V2);
eq('sizeof(struct vhost_msg_v2)', vhost.IOTLB_MSG_SIZE); eq('sizeof(struct vhost_msg)', vhost.IOTLB_MSG_SIZE);
const msg = { framing: 'type', asid: 'asid', iova: 'iotlb.iova', size: 'iotlb.size', uaddr: 'iotlb.uaddr', perm: 'iotlb.perm', type: 'iotlb.type' };
for (const [k, v] of Object.entries(vhost.IOTLB_MSG)) eq(`offsetof(struct vhost_msg_v2, ${msg[k]})`, v);
const { size: vringAddrSize, ...vringAddr } = vhost.VRING_ADDR;
for (const [k, v] of Object.entries(vringAddr)) eq(`offsetof(struct vhost_vring_addr, ${k === 'desc' ? 'desc_user_addr' : k === 'used' ? 'used_user_addr' : k === 'avail' ? 'avail_user_addr' : k === 'log' ? 'log_guest_addr' : k})`, v);
eq('sizeof(struct vhost_vring_addr)', vringAddrSize);

// ---- virtio (include/uapi/linux/virtio_config.h, virtio_ids.h) ----
for (const [k, v] of Object.entries(vhost.VIRTIO_STATUS)) eq(`VIRTIO_CONFIG_S_${k === 'NEEDS_RESET' ? 'NEEDS_RESET' : k}`, v);
eq('VIRTIO_ID_NET', vhost.VIRTIO_ID.NET); eq('VIRTIO_ID_BLOCK', vhost.VIRTIO_ID.BLOCK);
consts(vhost.VIRTIO_F, 'VIRTIO_F_', true);

// ---- virtio transport, rings and devices (linux/virtio_mmio.h, virtio_ring.h, virtio_net.h, virtio_blk.h) ----
consts(mmio.VIRTIO_MMIO, 'VIRTIO_MMIO_'); eq('VIRTIO_MMIO_INT_VRING', mmio.VIRTIO_MMIO_INT_VRING);
structs(vring);
consts(vring.VRING_DESC_F, 'VRING_DESC_F_');
eq('VRING_AVAIL_F_NO_INTERRUPT', vring.VRING_AVAIL_F_NO_INTERRUPT); eq('VRING_USED_ALIGN_SIZE', vring.VRING_USED_ALIGN_SIZE);
structs(net);
consts(net.VIRTIO_NET_F, 'VIRTIO_NET_F_', true); consts(net.VIRTIO_NET_CTRL, 'VIRTIO_NET_CTRL_'); consts(net.VIRTIO_NET_ACK, 'VIRTIO_NET_');
eq('VIRTIO_NET_S_LINK_UP', net.VIRTIO_NET_S_LINK_UP); eq('ETH_ALEN', net.ETH_ALEN);
structs(blk);
consts(blk.VIRTIO_BLK_F, 'VIRTIO_BLK_F_', true); consts(blk.VIRTIO_BLK_T, 'VIRTIO_BLK_T_'); consts(blk.VIRTIO_BLK_S, 'VIRTIO_BLK_S_');
eq('VIRTIO_BLK_ID_BYTES', blk.VIRTIO_BLK_ID_BYTES); eq('VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP', blk.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);

// ---- FUSE (include/uapi/linux/fuse.h) ----
structs(fuse);
consts(fuse.FUSE_OP, 'FUSE_'); // enum fuse_opcode
consts(fuse.FOPEN, 'FOPEN_'); consts(fuse.FUSE_INIT_FLAG, 'FUSE_'); eq('FUSE_KERNEL_VERSION', fuse.FUSE_KERNEL_VERSION);

const headers = ['stddef.h', 'linux/kvm.h', 'linux/vhost.h', 'linux/virtio_config.h', 'linux/virtio_ids.h', 'linux/virtio_mmio.h',
  'linux/virtio_ring.h', 'linux/virtio_net.h', 'linux/virtio_blk.h', 'linux/fuse.h'].map((h) => `#include <${h}>`);
/** The names these headers define: macros (`#define` lines) and whatever the rest declares (enum constants). */
function definedNames(dir) {
  writeFileSync(join(dir, 'headers.c'), `${headers.join('\n')}\n`);
  const pre = execFileSync('gcc', ['-E', '-dD', '-P', '-std=c11', join(dir, 'headers.c')], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const names = new Set();
  for (const line of pre.split('\n')) {
    const define = /^#define (\w+)/.exec(line);
    if (define) names.add(define[1]);
    else if (!line.startsWith('#')) for (const m of line.matchAll(/[A-Za-z_]\w*/g)) names.add(m[0]);
  }
  return names;
}
/** The upper-case names (macros, enum constants) an expression uses. */
const namesIn = (expr) => expr.match(/\b[A-Z_][A-Z0-9_]*\b/g) ?? [];
const dir = mkdtempSync(join(tmpdir(), 'minivmm-layout-'));
try {
  const defined = definedNames(dir);
  const unchecked = [], lines = [...headers];
  checks.forEach(([expr, ts, needs], i) => {
    const missing = [...namesIn(expr), ...(needs ? [needs] : [])].filter((n) => !defined.has(n));
    if (missing.length) { unchecked.push(namesIn(expr).includes(missing[0]) ? missing[0] : `${expr} (needs ${missing[0]})`); return; }
    lines.push(`_Static_assert((unsigned long long)(${expr}) == ${BigInt(ts)}ULL, "check ${i}: ${expr.replace(/"/g, '\\"')} is not ${ts} as written in the TypeScript");`);
  });
  writeFileSync(join(dir, 'layout.c'), `${lines.join('\n')}\n`);
  execFileSync('gcc', ['-fsyntax-only', '-std=c11', join(dir, 'layout.c')], { stdio: ['ignore', 'ignore', 'pipe'] });
  console.log(`layout check: ${checks.length - unchecked.length} offsets, sizes and constants agree with this system's kernel headers` +
    (unchecked.length ? `; ${unchecked.length} newer than these headers, unchecked: ${unchecked.join(', ')}` : ''));
} catch (e) {
  const msgs = [...new Set([...String(e.stderr ?? e.message).matchAll(/"check \d+: ([^"]+)"/g)].map((m) => m[1]))];
  process.stderr.write(`layout check failed (the TypeScript disagrees with this system's kernel headers):\n${(msgs.length ? msgs : [String(e.stderr ?? e.message)]).map((m) => `  ${m}`).join('\n')}\n`);
  process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
