// Every struct offset, size, ioctl number and flag written by hand in the TypeScript, checked at
// build time against this system's kernel headers: the compiled constants are turned into C
// `_Static_assert`s and compiled with gcc (a mismatch fails `npm install`, naming the field).
// The two ioctls and feature bits of the unmerged live-update series have no header to check.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dist = new URL('../dist/', import.meta.url);
const kvm = await import(new URL('src/kvm.js', dist).href);
const accel = await import(new URL('src/accel/kvm.js', dist).href);
const vhost = await import(new URL('src/vhost.js', dist).href);

/** [C expression, the TypeScript value] */
const checks = [];
const eq = (c, ts) => checks.push([c, ts]);
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

/** The macro a check depends on (a header older than the kernel feature lacks it), if any. */
const macroOf = (expr) => /^\(?1ULL << (\w+)\)$/.exec(expr)?.[1] ?? (/^[A-Z][A-Z0-9_]+$/.test(expr) ? expr : undefined);
const c = [
  '#include <stddef.h>', '#include <linux/kvm.h>', '#include <linux/vhost.h>', '#include <linux/virtio_config.h>', '#include <linux/virtio_ids.h>',
  ...checks.map(([expr, ts], i) => {
    const line = `_Static_assert((unsigned long long)(${expr}) == ${BigInt(ts)}ULL, "check ${i}: ${expr.replace(/"/g, '\\"')} is not ${ts} as written in the TypeScript");`;
    const macro = macroOf(expr);
    return macro ? `#ifdef ${macro}\n${line}\n#else\nconst char *unchecked_${i} = "${macro}";\n#endif` : line;
  }),
].join('\n');
const dir = mkdtempSync(join(tmpdir(), 'minivmm-layout-'));
try {
  writeFileSync(join(dir, 'layout.c'), `${c}\n`);
  execFileSync('gcc', ['-fsyntax-only', '-std=c11', join(dir, 'layout.c')], { stdio: ['ignore', 'ignore', 'pipe'] });
  // Which macros these headers lack: the preprocessor keeps exactly those `unchecked_` lines.
  const pre = execFileSync('gcc', ['-E', '-P', '-std=c11', join(dir, 'layout.c')], { encoding: 'utf8' });
  const absent = [...pre.matchAll(/unchecked_\d+ = "(\w+)"/g)].map((m) => m[1]);
  console.log(`layout check: ${checks.length - absent.length} offsets, sizes and constants agree with this system's kernel headers` +
    (absent.length ? `; ${absent.length} newer than these headers, unchecked: ${absent.join(', ')}` : ''));
} catch (e) {
  const msgs = [...new Set([...String(e.stderr ?? e.message).matchAll(/"check \d+: ([^"]+)"/g)].map((m) => m[1]))];
  process.stderr.write(`layout check failed (the TypeScript disagrees with this system's kernel headers):\n${(msgs.length ? msgs : [String(e.stderr ?? e.message)]).map((m) => `  ${m}`).join('\n')}\n`);
  process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
