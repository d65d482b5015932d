// Machine assembly (Firecracker's vstate: vm, vcpus, memory) and its state: build a fresh VM, or
// rebuild one from a saved MachineState over inherited RAM memfds.
import { openSync, writeSync } from 'node:fs';
import { Kvm, VmFd, VcpuFd, PIC_MASTER, PIC_SLAVE, IOAPIC, SIZE } from '../src/kvm.js';
import { GuestMemory } from '../src/memory.js';
import { Serial, COM1_BASE, COM1_IRQ, EXIT_PORT } from '../devices/serial.js';
import { prepareBoot, setupLongMode, type BootDevice } from './boot.js';
import { Vcpus, GuestExit, type VcpuEvent } from './vcpus.js';
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
/** A VM made ahead of its state; `mem` once RAM is registered with it (cpr-transfer). */
export type VmShell = Omit<MachineParts, 'mem' | 'cpuid'> & { mem?: GuestMemory };

/** An MMIO region on the bus (virtio-mmio transports register here). */
export interface MmioDevice { base: number; size: number; read(offset: number, data: Buffer): void; write(offset: number, data: Buffer): void }

export class Machine {
  readonly serial: Serial;
  readonly vcpus: Vcpus;
  readonly mmioDevices: MmioDevice[] = [];
  private msrIndices: number[] = [];
  running = false;

  private constructor(
    readonly config: MachineConfig,
    readonly parts: MachineParts,
    readonly serialFd: number,
    onEvent: (e: VcpuEvent) => void,
  ) {
    const { vm } = parts;
    this.serial = new Serial(undefined, (byte) => writeSync(serialFd, Buffer.of(byte)), (level) => vm.irqLine(COM1_IRQ, level));
    this.vcpus = new Vcpus(parts.mem, {
      in: (port) => (port >= COM1_BASE && port < COM1_BASE + 8 ? this.serial.read(port - COM1_BASE) : 0xffffffff),
      out: (port, _size, value) => {
        if (port >= COM1_BASE && port < COM1_BASE + 8) this.serial.write(port - COM1_BASE, value & 0xff);
        else if (port === EXIT_PORT) throw new GuestExit(value & 0xff);
      },
    }, (addr, isWrite, data) => this.mmio(addr, isWrite, data), onEvent);
  }

  private mmio(addr: number, isWrite: boolean, data: Buffer): void {
    const d = this.mmioDevices.find((x) => addr >= x.base && addr + data.length <= x.base + x.size);
    if (!d) { if (!isWrite) data.fill(0xff); return; } // nothing there
    if (isWrite) d.write(addr - d.base, data); else d.read(addr - d.base, data);
  }

  get mem(): GuestMemory { return this.parts.mem; }

  /** Opens the serial sink for a fresh start. */
  static openSerial(config: MachineConfig): number {
    return config.serial === 'stdio' ? 1 : openSync(config.serial, 'a');
  }

  /** A new VM over `mem`, with irqchip, PIT and vCPUs (CPUID set). */
  static buildVm(mem: GuestMemory, smp: number, cpuid?: Buffer, shell?: VmShell): MachineParts {
    const usable = shell && shell.vcpus.length === smp ? shell : Machine.createShell(smp);
    if (usable.mem !== mem) Machine.addMemory(usable, mem);
    const { kvm, vm, vcpus, runSize } = usable;
    const id = cpuid ?? kvm.supportedCpuid();
    for (const v of vcpus) v.setCpuid2(id);
    return { kvm, vm, mem, vcpus, runSize, cpuid: id };
  }

  /**
   * The parts of a VM that need nothing from the guest: the VM, irqchip, PIT and vCPUs. A
   * cpr-transfer target makes them before the state arrives (~10 ms less blackout).
   */
  static createShell(smp: number): VmShell {
    const kvm = new Kvm();
    const vm = kvm.createVm();
    vm.setTssAddr(TSS_ADDR);
    vm.createIrqchip();
    vm.createPit2();
    const runSize = kvm.vcpuMmapSize();
    const vcpus = Array.from({ length: smp }, (_, i) => new VcpuFd(vm.createVcpu(i), i, runSize));
    return { kvm, vm, vcpus, runSize };
  }

  /** Registers RAM with a shell's VM ahead of the state (its memory slots are the shell's from then on). */
  static addMemory(shell: VmShell, mem: GuestMemory): void {
    mem.regions.forEach((r, slot) => shell.vm.setUserMemoryRegion(slot, r.gpa, r.size, r.hostAddr));
    shell.mem = mem;
  }

  /** A fresh machine: RAM, VM and vCPUs, no guest loaded yet (devices attach in between). */
  static create(config: MachineConfig, onEvent: (e: VcpuEvent) => void): Machine {
    const serialFd = Machine.openSerial(config);
    const mem = GuestMemory.create(config.memory);
    const m = new Machine(config, Machine.buildVm(mem, config.smp), serialFd, onEvent);
    m.serial.load(Serial.initialState());
    m.msrIndices = m.probeMsrs();
    return m;
  }

  /** Loads `config.guest` and points vCPU 0 at it; the boot info lists `devices`. */
  loadGuest(devices: BootDevice[]): void {
    const { mem, vcpus } = this.parts;
    const entry = prepareBoot(mem, this.config.guest, this.config.smp, devices, this.config.cmdline, vcpus[0].tscKhz());
    setupLongMode(vcpus[0], entry, 0); // application processors wait for INIT/SIPI, as on hardware
  }

  /** Rebuilds the VM from saved state over already-mapped RAM. */
  static restore(state: MachineState, mem: GuestMemory, serialFd: number, onEvent: (e: VcpuEvent) => void, shell?: VmShell): Machine {
    const parts = Machine.buildVm(mem, state.config.smp, state.cpuid, shell);
    const m = new Machine(state.config, parts, serialFd, onEvent);
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

  /** Starts the vCPU loops; they run unless `paused`. */
  start(paused = false): void {
    this.vcpus.start(this.parts.vcpus, paused);
    this.running = !paused;
  }

  async pause(): Promise<void> { await this.vcpus.pause(); this.running = false; }
  resume(): void { this.vcpus.resume(); this.running = true; }

  /** Everything needed to rebuild this VM. The vCPUs must be paused. */
  save(devices: Omit<MachineState['devices'], 'serial'> = {}): MachineState {
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
