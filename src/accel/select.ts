// Choosing the accelerator: `--accel kvm|emu|auto` (QEMU's naming). `auto` takes KVM when
// /dev/kvm opens and the emulator otherwise, and says which one runs and why.
import { AccelUnavailable, type Accelerator, type AccelKind } from './index.js';

export type AccelChoice = AccelKind | 'auto';
export const ACCEL_CHOICES: readonly AccelChoice[] = ['auto', 'kvm', 'emu'];

export async function openAccelerator(choice: AccelChoice): Promise<{ accel: Accelerator; notice?: string }> {
  if (choice === 'kvm') return { accel: await openKvm() };
  if (choice === 'emu') return { accel: await openEmu() };
  let kvmWhy: string;
  try {
    return { accel: await openKvm() };
  } catch (e) {
    if (!(e instanceof AccelUnavailable)) throw e;
    kvmWhy = e.message;
  }
  try {
    const accel = await openEmu();
    return { accel, notice: `accelerator: ${accel.description} (${kvmWhy})` };
  } catch (e) {
    if (!(e instanceof AccelUnavailable)) throw e;
    throw new AccelUnavailable(`neither KVM (${kvmWhy}) nor the emulator (${e.message})`);
  }
}

async function openKvm(): Promise<Accelerator> {
  const { KvmAccelerator } = await import('./kvm.js');
  return KvmAccelerator.open();
}

export function isAccelChoice(v: unknown): v is AccelChoice { return ACCEL_CHOICES.includes(v as AccelChoice); }

async function openEmu(): Promise<Accelerator> {
  const { EmuAccelerator } = await import('./emu/index.js');
  return EmuAccelerator.open();
}
