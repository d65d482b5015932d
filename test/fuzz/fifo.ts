// mkfifo(3) (Node has no binding): through the product's ffi-rs, like every other syscall.
import ffi from '../../src/ffi.js';

export function mkfifoSync(path: string, mode = 0o600): void {
  ffi.open({ library: 'libc', path: '' });
  const r = ffi.load({ library: 'libc', funcName: 'mkfifo', retType: ffi.DataType.I32, paramsType: [ffi.DataType.String, ffi.DataType.I32], paramsValue: [path, mode] }) as unknown as number;
  if (r !== 0) throw new Error(`mkfifo(${path}) failed`);
}
