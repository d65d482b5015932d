// Fresh start of a VMM process: boot the machine, open the monitor, run until the guest exits.
import { Machine } from './machine.js';
import { Vmm, VERSION } from './vmm.js';
import { QmpServer } from './qmp.js';
import { MIGRATORS } from '../cpr/exec.js';
import { log } from './log.js';
import { parseVdpaSpec, resolveVdpaPaths, attachVdpa, stopDaemon, watchDaemon } from './vdpa.js';
import type { MachineConfig } from '../cpr/state.js';

export async function startVmm(config: MachineConfig): Promise<Vmm> {
  const vmm = new Vmm(MIGRATORS);
  const specs = config.vdpa.map(parseVdpaSpec);
  const { paths, daemon } = await resolveVdpaPaths(specs, config.memory);
  vmm.daemon = daemon;
  vmm.exitHooks.push(() => stopDaemon(vmm.daemon));
  try {
    vmm.machine = Machine.create(config, vmm.onVcpuEvent);
    const { devices, boot } = attachVdpa(vmm.machine, paths);
    vmm.vdpa = devices;
    vmm.machine.loadGuest(boot);
  } catch (e) {
    await stopDaemon(daemon);
    throw e;
  }
  if (config.qmp) await vmm.startMonitor(await QmpServer.listen(config.qmp, VERSION));
  vmm.handleSignals();
  watchDaemon(vmm);
  vmm.machine.start();
  (await log()).debug({ guest: config.guest, memory: config.memory, smp: config.smp }, 'guest started');
  return vmm;
}
