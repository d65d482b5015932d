// The live-update transports, as the Vmm's `migrate` command uses them, and the two ways a new
// process receives a VM. The restore path (bin/minivmm.js after an exec) loads this module only.
import type { Accelerator } from '../src/accel/index.js';
import type { Migrators, EarlySignals, Vmm } from '../vmm/vmm.js';
import { cprExec, incomingExec } from './exec.js';
import { cprTransfer, incomingTransfer } from './transfer.js';

export const MIGRATORS: Migrators = {
  'cpr-exec': (vmm) => cprExec(vmm, vmm.params.cprExecCommand),
  'cpr-transfer': (vmm, uri) => cprTransfer(vmm, uri, vmm.params.transferTimeoutMs),
};

/** A process started by cpr-exec. */
export const restoreAfterExec = (entryTime: bigint, early: EarlySignals): Promise<Vmm> => incomingExec(MIGRATORS, entryTime, early);

/** A process started with --incoming cpr-transfer:PATH. */
export const waitForTransfer = (path: string, smp: number, accel: Accelerator): Promise<Vmm> => incomingTransfer(MIGRATORS, path, smp, accel);

export { isExecHandoff, INJECT_ENV } from './exec.js';
