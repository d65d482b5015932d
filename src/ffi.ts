// ffi-rs, loaded in this one place. Its napi-rs loader calls process.report.getReport() only to
// learn whether this Node runs on glibc or musl. A full diagnostic report costs ~4 ms here (it
// symbolizes the native stack), paid by every start and every cpr-exec restore inside the
// blackout. For that one require the loader gets the same fact from the C library this process
// has mapped; the real getReport is put back at once.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

type FfiRs = typeof import('ffi-rs');

/** Whether this process runs on glibc (its libc.so.6 is mapped), what the report's header says by glibcVersionRuntime. */
export const mapsGlibc = (): boolean => /\/libc\.so\.6$/m.test(readFileSync('/proc/self/maps', 'utf8'));

function loadFfiRs(): FfiRs {
  const report = process.report;
  const full = report.getReport;
  const glibc = mapsGlibc();
  report.getReport = (() => ({ header: { glibcVersionRuntime: glibc ? 'mapped' : undefined } })) as unknown as typeof full;
  try {
    return createRequire(import.meta.url)('ffi-rs') as FfiRs;
  } finally {
    report.getReport = full;
  }
}

const ffi = loadFfiRs();
// The library's types under the same name, as `import ffi from 'ffi-rs'` gave them.
declare namespace ffi {
  type DataType = import('ffi-rs').DataType;
  type JsExternal = import('ffi-rs').JsExternal;
}
export default ffi;
