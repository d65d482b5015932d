// The address-space keeper of a cpr-exec (src/native/keeper.c says why it exists and how it is
// safe): the old image starts one just before execve; the new image kills it once the guest runs,
// and the old address space is torn down then, in the keeper's exit, outside the blackout.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ffi from './ffi.js';
import { SyscallError, reapWhenExited } from './libc.js';

const { DataType: T } = ffi;
const LIB = 'minivmm-keeper';
// dist/native/ beside dist/src/ (and beside dist/cpr/, where the bundled restore path runs from).
const PATH = fileURLToPath(new URL('../native/libminivmm-keeper.so', import.meta.url));
let loaded: string | null | undefined;

/** Loads the library (before the pause: dlopen is not for the blackout). Null, or why there is no keeper. */
export function loadKeeper(): string | null {
  if (loaded !== undefined) return loaded;
  if (!existsSync(PATH)) return (loaded = `${PATH} is missing (npm run build makes it)`);
  try { ffi.open({ library: LIB, path: PATH }); } catch (e) { return (loaded = `cannot load ${PATH}: ${(e as Error).message.split('\n')[0]}`); }
  return (loaded = null);
}

/** Starts a keeper sharing this address space; its pid. Throws if it cannot. */
export function startKeeper(): number {
  const why = loadKeeper();
  if (why) throw new Error(`no address-space keeper: ${why}`);
  const r = ffi.load({ library: LIB, funcName: 'keeper_start', retType: T.I32, paramsType: [], paramsValue: [] }) as unknown as number;
  if (r < 0) throw new SyscallError('clone(CLONE_VM)', -r);
  return r;
}

/**
 * Ends a keeper and reaps it. The kill returns at once; the keeper's exit (the old address
 * space's teardown) runs on whatever CPU is free, and the reaping waits for it from a timer.
 */
export async function releaseKeeper(pid: number, boundMs = 30_000): Promise<void> {
  try { process.kill(pid, 'SIGKILL'); } catch (e) { if ((e as { code?: string }).code !== 'ESRCH') throw e; }
  await reapWhenExited(pid, boundMs).catch(() => {
    throw new Error(`the address-space keeper ${pid} did not exit within ${boundMs} ms of SIGKILL`);
  });
}
