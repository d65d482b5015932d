// Machine assembly (Firecracker's vstate: vm, vcpus, memory) and its state: build a fresh VM, or
// rebuild one from a saved MachineState over inherited RAM memfds.
import { openSync } from 'node:fs';
import { Kvm, VmFd, VcpuFd, PIC_MASTER, PIC_SLAVE, IOAPIC, SIZE } from '../src/kvm.js';
import { GuestMemory } from '../src/memory.js';
import { Serial } from '../devices/serial.js';
import { prepareBoot, setupLongMode } from './boot.js';
import { VcpuThreads, type VcpuEvent } from './vcpus.js';
import type { MachineConfig, MachineState, VcpuState } from '../cpr/state.js';

const TSS_ADDR = 0xfffbd000;
/** MSRs that carry guest state (TSC included); the ones KVM refuses on this host are dropped at creation. */
const MSR_CANDIDATES = [
  0x174, 0x175, 0x176, // SYSENTER_CS/ESP/EIP
  0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000102, // STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE
  0x277, 0x1a0, // PAT, MISC_ENABLE
  0x10, // TSC last: restored after everything else
];

export interface MachineParts { kvm: Kvm; vm: VmFd; mem: GuestMemory; vcpus: VcpuFd[]; runSize: number; cpuid: Buffer }

export class Machine {
  readonly serial: Serial;
  private msrIndices: number[] = [];
  running = false;

  private constructor(
    readonly config: MachineConfig,
    readonly parts: MachineParts,
    readonly threads: VcpuThreads,
    readonly serialFd: number,
    serialShared: SharedArrayBuffer,
  ) {
    // The main thread's view of the UART registers (for save/restore); output happens in vCPU threads.
    this.serial = new Serial(serialShared, () => {}, () => {});
  }

  get mem(): GuestMemory { return this.parts.mem; }

  /** Opens the serial sink for a fresh start. */
  static openSerial(config: MachineConfig): number {
    return config.serial === 'stdio' ? 1 : openSync(config.serial, 'a');
  }

  /** Spawns the vCPU threads first: they load while the VM is built. */
  static spawnThreads(smp: number, serialFd: number, onEvent: (e: VcpuEvent) => void): { threads: VcpuThreads; serialShared: SharedArrayBuffer } {
    const serialShared = new SharedArrayBuffer(9 * 4);
    return { threads: new VcpuThreads(smp, serialShared, serialFd, onEvent), serialShared };
  }

  /** A new VM over `mem`, with irqchip, PIT and vCPUs (CPUID set). */
  static buildVm(mem: GuestMemory, smp: number, cpuid?: Buffer): MachineParts {
    const kvm = new Kvm();
    const vm = kvm.createVm();
    vm.setTssAddr(TSS_ADDR);
    vm.createIrqchip();
    vm.createPit2();
    mem.regions.forEach((r, slot) => vm.setUserMemoryRegion(slot, r.gpa, r.size, r.hostAddr));
    const runSize = kvm.vcpuMmapSize();
    const id = cpuid ?? kvm.supportedCpuid();
    const vcpus: VcpuFd[] = [];
    for (let i = 0; i < smp; i++) {
      const v = new VcpuFd(vm.createVcpu(i), i, runSize);
      v.setCpuid2(id);
      vcpus.push(v);
    }
    return { kvm, vm, mem, vcpus, runSize, cpuid: id };
  }

  /** Fresh boot of `config.guest`. Returns with the vCPUs running. */
  static async boot(config: MachineConfig, onEvent: (e: VcpuEvent) => void, devices: { type: number; irq: number; base: number; size: number }[] = []): Promise<Machine> {
    const serialFd = Machine.openSerial(config);
    const { threads, serialShared } = Machine.spawnThreads(config.smp, serialFd, onEvent);
    try {
      const mem = GuestMemory.create(config.memory);
      const parts = Machine.buildVm(mem, config.smp);
      const entry = prepareBoot(mem, config.guest, config.smp, devices, config.cmdline);
      setupLongMode(parts.vcpus[0], entry, 0); // application processors wait for INIT/SIPI, as on hardware
      const m = new Machine(config, parts, threads, serialFd, serialShared);
      m.serial.load(Serial.initialState());
      m.msrIndices = m.probeMsrs();
      return m;
    } catch (e) {
      await threads.stop();
      throw e;
    }
  }

  /** Rebuilds the VM from saved state over already-mapped RAM; vCPU threads were spawned by the caller. */
  static restore(state: MachineState, mem: GuestMemory, threads: VcpuThreads, serialFd: number, serialShared: SharedArrayBuffer): Machine {
    const parts = Machine.buildVm(mem, state.config.smp, state.cpuid);
    const m = new Machine(state.config, parts, threads, serialFd, serialShared);
    const { vm, vcpus } = parts;
    vm.setIrqchip(state.irqchip.picMaster);
    vm.setIrqchip(state.irqchip.picSlave);
    vm.setIrqchip(state.irqchip.ioapic);
    vm.setPit2(state.pit);
    state.vcpus.forEach((s, i) => Machine.restoreVcpu(vcpus[i], s));
    m.msrIndices = msrIndicesOf(state.vcpus[0].msrs);
    m.serial.load(state.devices.serial);
    return m;
  }

  private static restoreVcpu(v: VcpuFd, s: VcpuState): void {
    v.setSregs(s.sregs);
    v.setRegs(s.regs);
    if (s.xsave) v.setXsave(s.xsave); else if (s.fpu) v.setFpu(s.fpu);
    v.setLapic(s.lapic);
    const msrs = new Map<number, bigint>();
    for (let o = 0; o < s.msrs.length; o += SIZE.msrEntry) msrs.set(s.msrs.readUInt32LE(o), s.msrs.readBigUInt64LE(o + 8));
    const n = v.setMsrs(msrs);
    if (n !== msrs.size) throw new Error(`KVM_SET_MSRS set ${n} of ${msrs.size} MSRs`);
    v.setMpState(s.mpState);
    v.setVcpuEvents(s.events);
  }

  private probeMsrs(): number[] {
    const v = this.parts.vcpus[0];
    return MSR_CANDIDATES.filter((idx) => v.getMsrs([idx]).size === 1);
  }

  /** Hands the vCPUs to their threads; they start running unless `paused`. */
  async start(paused = false): Promise<void> {
    const { vm, mem, vcpus, runSize } = this.parts;
    await this.threads.start(vcpus, { vmFd: vm.fd, ram: mem.regions.map((r) => ({ gpa: r.gpa, size: r.size, hostAddr: r.hostAddr })) }, runSize, paused);
    this.running = !paused;
  }

  pause(): void { this.threads.pause(); this.running = false; }
  resume(): void { this.threads.resume(); this.running = true; }

  /** Everything needed to rebuild this VM. The vCPUs must be paused. */
  save(devices: Record<string, unknown> = {}): MachineState {
    const { vm, vcpus, mem, cpuid } = this.parts;
    return {
      config: this.config,
      cpuid,
      memory: mem.regions.map((r) => ({ name: r.name, gpa: r.gpa, size: r.size })),
      vcpus: vcpus.map((v) => this.saveVcpu(v)),
      irqchip: { picMaster: vm.getIrqchip(PIC_MASTER), picSlave: vm.getIrqchip(PIC_SLAVE), ioapic: vm.getIrqchip(IOAPIC) },
      pit: vm.getPit2(),
      devices: { ...devices, serial: this.serial.save() },
    };
  }

  private saveVcpu(v: VcpuFd): VcpuState {
    let xsave: Buffer | null = null, fpu: Buffer | null = null;
    try { xsave = v.getXsave(); } catch { fpu = v.getFpu(); }
    const msrs = v.getMsrs(this.msrIndices);
    const msrBuf = Buffer.alloc(msrs.size * SIZE.msrEntry);
    let o = 0;
    for (const [idx, val] of msrs) { msrBuf.writeUInt32LE(idx, o); msrBuf.writeBigUInt64LE(val, o + 8); o += SIZE.msrEntry; }
    return { regs: v.getRegs(), sregs: v.getSregs(), xsave, fpu, lapic: v.getLapic(), mpState: v.getMpState(), events: v.getVcpuEvents(), msrs: msrBuf };
  }
}

function msrIndicesOf(buf: Buffer): number[] {
  const out: number[] = [];
  for (let o = 0; o < buf.length; o += SIZE.msrEntry) out.push(buf.readUInt32LE(o));
  return out;
}
