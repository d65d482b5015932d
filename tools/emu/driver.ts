// Runs a toy guest straight on an accelerator, without the VMM: guest RAM, the boot contract
// (vmm/boot.ts), COM1 (devices/serial.ts) and the exit port. The emu tests and benchmark use it
// while vmm/ is being moved onto the accelerator seam.
import { GuestMemory, MiB } from '../../src/memory.js';
import type { Accelerator, CpuState, PlatformState, Vcpu, Vm } from '../../src/accel/index.js';
import { prepareBoot, setupLongMode } from '../../vmm/boot.js';
import { Serial, COM1_BASE, COM1_IRQ, EXIT_PORT } from '../../devices/serial.js';

export interface BootOptions { image: string; memory?: number; cmdline?: string }

export class GuestRunner {
  output = '';
  exitCode: number | null = null;
  fatal: string | null = null;
  /** Called with the whole output so far after every byte. */
  onOutput?: (output: string) => void;
  /** Ports a test adds (a value for IN, or undefined to fall through; OUT returns anything). */
  onPort?: (port: number, write: boolean, value: number) => number | undefined;
  /** MMIO a test adds (fill `data` for a read); unhandled reads see zeros. */
  onMmio?: (addr: number, write: boolean, data: Buffer) => boolean;
  private pausing = false;
  private loop: Promise<void> | null = null;
  readonly serial: Serial;

  private constructor(readonly vm: Vm, readonly mem: GuestMemory) {
    this.serial = new Serial((b) => { this.output += String.fromCharCode(b); this.onOutput?.(this.output); }, (level) => vm.irqLine(COM1_IRQ, level));
  }

  get vcpu(): Vcpu { return this.vm.vcpus[0]; }

  /** A fresh VM with `image` loaded and vCPU 0 at its entry point. */
  static boot(accel: Accelerator, o: BootOptions): GuestRunner {
    const mem = GuestMemory.create(o.memory ?? 256 * MiB);
    const vm = accel.createVm(1);
    vm.setMemory(mem);
    vm.configureCpus();
    const entry = prepareBoot(mem, o.image, 1, [], o.cmdline ?? '', vm.vcpus[0].tscKhz());
    setupLongMode(vm.vcpus[0], entry, 0);
    return new GuestRunner(vm, mem);
  }

  /** A new VM over the same memory, restored from saved state (a live update without the exec). */
  static restore(accel: Accelerator, mem: GuestMemory, cpu: CpuState, platform: PlatformState, serial: number[]): GuestRunner {
    const vm = accel.createVm(1);
    vm.setMemory(mem);
    vm.configureCpus(cpu.accel);
    vm.vcpus[0].setState(cpu);
    vm.setPlatformState(platform);
    const r = new GuestRunner(vm, mem);
    r.serial.load(serial);
    return r;
  }

  /** Starts (or resumes) the vCPU; resolves when the guest exits, fails, or is paused. */
  start(): Promise<void> {
    this.pausing = false;
    this.vcpu.clearExitRequest();
    this.loop = this.runLoop();
    return this.loop;
  }

  private async runLoop(): Promise<void> {
    for (;;) {
      const e = await this.vcpu.run();
      switch (e.kind) {
        case 'io': {
          for (let i = 0, at = 0; i < e.count; i++, at += e.size) {
            const r = this.onPort?.(e.port, e.write, e.write ? e.data.readUIntLE(at, e.size) : 0);
            if (r !== undefined) {
              if (!e.write) e.data.writeUIntLE(r, at, e.size);
            } else if (e.port >= COM1_BASE && e.port < COM1_BASE + 8) {
              if (e.write) this.serial.write(e.port - COM1_BASE, e.data.readUIntLE(at, e.size));
              else e.data.writeUIntLE(this.serial.read(e.port - COM1_BASE), at, 1);
            } else if (e.port === EXIT_PORT && e.write) {
              this.exitCode = e.data.readUIntLE(at, e.size) & 0xff;
              return;
            } else if (!e.write) {
              e.data.fill(0xff, at, at + e.size);
            }
          }
          break;
        }
        case 'mmio': if (!this.onMmio?.(e.addr, e.write, e.data) && !e.write) e.data.fill(0); break;
        case 'interrupted': if (this.pausing) return; break;
        case 'hlt': break;
        case 'system-event': this.exitCode = 0; return;
        case 'fatal': this.fatal = e.message; return;
      }
    }
  }

  /** Stops the vCPU at an instruction boundary (any I/O in flight completed). */
  async pause(): Promise<void> {
    this.pausing = true;
    this.vcpu.requestExit();
    await this.loop;
  }

  /** Runs until the guest ends (exit port or fatal) or `timeoutMs` passes (then pauses). */
  async runToEnd(timeoutMs = 60_000): Promise<void> {
    const done = this.start();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => { timer = setTimeout(() => r('timeout'), timeoutMs); });
    const r = await Promise.race([done.then(() => 'done' as const), timeout]);
    clearTimeout(timer);
    if (r === 'timeout') {
      await this.pause();
      this.fatal = `timed out after ${timeoutMs} ms; output so far: ${JSON.stringify(this.output.slice(-300))}`;
    }
  }

  /** Resolves when the output matches; rejects when the guest ends first or `timeoutMs` passes. */
  waitFor(re: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const prev = this.onOutput;
      const done = (m: RegExpMatchArray | null, why?: string) => {
        clearTimeout(timer);
        this.onOutput = prev;
        if (m) resolve(m); else reject(new Error(`${why} before ${re}; output ends ${JSON.stringify(this.output.slice(-200))}${this.fatal ? `; ${this.fatal}` : ''}`));
      };
      const timer = setTimeout(() => done(null, `timed out after ${timeoutMs} ms`), timeoutMs);
      const m = this.output.match(re);
      if (m) { done(m); return; }
      this.onOutput = (o) => { prev?.(o); const x = o.match(re); if (x) done(x); };
      void this.loop?.then(() => { const x = this.output.match(re); if (x) done(x); else done(null, 'the guest stopped'); });
    });
  }

  close(): void { this.vm.close(); }
}
