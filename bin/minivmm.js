#!/usr/bin/env node
// Entry point, in CommonJS (bin/package.json): Node's ES module loader costs ~6-9 ms of start-up,
// which a process restoring a guest would pay inside the guest's blackout. A process started by
// cpr-exec (state fd in the environment) goes straight to the restore path, one bundled CommonJS
// file (tools/bundle.mjs), and loads nothing else first.
'use strict';
const entryTime = process.hrtime.bigint();
// Each running vCPU holds a libuv pool thread in its run: room for 4 vCPUs beside Node's own 4.
process.env.UV_THREADPOOL_SIZE ??= '8';
const fatal = (what, e) => {
  process.stderr.write(`minivmm: ${what}: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}\n`);
  process.exit(1);
};
if (process.env.MINIVMM_CPR_STATE !== undefined) {
  // From the first statement: a signal must not kill an image that is restoring a guest (Node
  // resets signal dispositions at start-up, so nothing set before the exec survives it).
  const early = { got: [], forward: undefined }; // vmm/vmm.ts EarlySignals (importing it would delay this)
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => (early.forward ? early.forward(sig) : early.got.push(sig)));
  let restoreAfterExec;
  try { ({ restoreAfterExec } = require('../dist/cpr/restore.cjs')); } catch (e) { fatal('cannot load the restore path in dist/ (run npm run build)', e); }
  restoreAfterExec(entryTime, early).catch((e) => fatal('cannot restore the VM after exec', e));
} else {
  import('../dist/cli/main.js').then(
    ({ main }) => main(process.argv.slice(2)),
    (e) => fatal('cannot load the build in dist/ (run npm run build)', e),
  );
}
