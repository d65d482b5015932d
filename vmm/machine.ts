// Machine assembly (Firecracker's vstate: vm, vcpus, memory) over the accelerator seam: build a
// fresh VM, or rebuild one from a saved MachineState over inherited RAM memfds.
import { openSync } from 'node:fs';
import type { Accelerator, Vm } from '../src/accel/index.js';
import { GuestMemory } from '../src/memory.js';
import { cprSaveFd } from '../src/cpr-fds.js';
import { Serial, fdSink, COM1_BASE, COM1_IRQ, EXIT_PORT } from '../devices/serial.js';
import { prepareBoot, setupLongMode, type BootDevice } from './boot.js';
import { Vcpus, GuestExit, type VcpuEvent } from './vcpus.js';
import type { MachineConfig, MachineState } from './state.js';

/** An MMIO region on the bus (virtio-mmio transports register here). */
export interface MmioDevice { base: number; size: number; read(offset: number, data: Buffer): void; write(offset: number, data: Buffer): void }

export class Machine {
  readonly serial: Serial;
  readonly vcpus: Vcpus;
  readonly mmioDevices: MmioDevice[] = [];
  running = false;

  private constructor(readonly config: MachineConfig, readonly vm: Vm, readonly mem: GuestMemory, readonly serialFd: number, onEvent: (e: VcpuEvent) => void) {
    if (serialFd > 2) cprSaveFd('serial', 0, serialFd); // a --serial FILE: the new image appends to the same open file
    this.serial = new Serial(fdSink(serialFd), (level) => vm.irqLine(COM1_IRQ, level));
    this.vcpus = new Vcpus({
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

  get kind(): Vm['kind'] { return this.vm.kind; }

  /** Opens the serial sink for a fresh start. */
  static openSerial(config: MachineConfig): number {
    return config.serial === 'stdio' ? 1 : openSync(config.serial, 'a');
  }

  /** A fresh machine: RAM, VM and vCPUs, no guest loaded yet (devices attach in between). */
  static create(config: MachineConfig, accel: Accelerator, onEvent: (e: VcpuEvent) => void): Machine {
    const serialFd = Machine.openSerial(config);
    const mem = GuestMemory.create(config.memory);
    const vm = accel.createVm(config.smp);
    vm.setMemory(mem);
    vm.configureCpus();
    const m = new Machine(config, vm, mem, serialFd, onEvent);
    m.serial.load(Serial.initialState());
    return m;
  }

  /** Loads `config.guest` and points vCPU 0 at it; the boot info lists `devices`. */
  loadGuest(devices: BootDevice[]): void {
    const vcpu0 = this.vm.vcpus[0];
    const entry = prepareBoot(this.mem, this.config.guest, this.config.smp, devices, this.config.cmdline, vcpu0.tscKhz());
    setupLongMode(vcpu0, entry, 0); // application processors wait for INIT/SIPI, as on hardware
  }

  /**
   * Rebuilds the VM from saved state over already-mapped RAM, on `accel` (which need not be the
   * accelerator that saved it). `vm`: one made ahead of the state (cpr-transfer), RAM registered.
   */
  static restore(state: MachineState, mem: GuestMemory, serialFd: number, accel: Accelerator, onEvent: (e: VcpuEvent) => void, vm?: Vm): Machine {
    const usable = vm && vm.kind === accel.kind && vm.vcpus.length === state.config.smp ? vm : accel.createVm(state.config.smp);
    if (usable.memory !== mem) usable.setMemory(mem);
    usable.configureCpus(state.cpuModel.kind === usable.kind ? state.cpuModel : undefined);
    const m = new Machine({ ...state.config }, usable, mem, serialFd, onEvent);
    usable.setPlatformState(state.platform);
    state.vcpus.forEach((s, i) => usable.vcpus[i].setState(s));
    m.serial.load(state.serial);
    return m;
  }

  /** Starts the vCPU loops; they run unless `paused`. */
  start(paused = false): void {
    this.vcpus.start(this.vm.vcpus, paused);
    this.running = !paused;
  }

  async pause(): Promise<void> { await this.vcpus.pause(); this.running = false; }
  resume(): void { this.vcpus.resume(); this.running = true; }

  /** Everything needed to rebuild this VM. The vCPUs must be paused. */
  save(): MachineState {
    return {
      config: this.config,
      accel: this.vm.kind,
      cpuModel: this.vm.cpuModel(),
      memory: this.mem.regions.map((r) => ({ name: r.name, gpa: r.gpa, size: r.size })),
      vcpus: this.vm.vcpus.map((v) => v.getState()),
      platform: this.vm.getPlatformState(),
      serial: this.serial.save(),
    };
  }
}
