// Fresh start of a VMM process: boot the machine, open the monitor, run until the guest exits.
import { Machine } from './machine.js';
import { Vmm, VERSION } from './vmm.js';
import { QmpServer } from './qmp.js';
import { cprExec } from '../cpr/exec.js';
import { log } from './log.js';
import { parseVdpaSpec, resolveVdpaPaths, attachVdpa, stopDaemon } from './vdpa.js';
import type { MachineConfig } from '../cpr/state.js';

export async function startVmm(config: MachineConfig): Promise<Vmm> {
  const vmm = new Vmm(cprExec);
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
  installSignalHandlers(vmm);
  vmm.machine.start();
  (await log()).debug({ guest: config.guest, memory: config.memory, smp: config.smp }, 'guest started');
  return vmm;
}

/** SIGTERM/SIGINT end the VM cleanly (socket removed, daemons stopped). */
export function installSignalHandlers(vmm: Vmm): void {
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => void vmm.exit(128 + (sig === 'SIGTERM' ? 15 : 2)));
}
