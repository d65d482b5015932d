#!/usr/bin/env node
// Entry point. A process started by cpr-exec (state fd in the environment) goes straight to the
// restore path and loads nothing else first: its start-up is part of the guest's blackout.
const entryTime = process.hrtime.bigint();
// Each running vCPU holds a libuv pool thread in KVM_RUN: room for 4 vCPUs beside Node's own 4.
process.env.UV_THREADPOOL_SIZE ??= '8';
if (process.env.MINIVMM_CPR_STATE !== undefined) {
  // From the first statement: a signal must not kill an image that is restoring a guest (Node
  // resets signal dispositions at start-up, so nothing set before the exec survives it).
  const early = { got: [], forward: undefined }; // vmm/vmm.ts EarlySignals (importing it would delay this)
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => (early.forward ? early.forward(sig) : early.got.push(sig)));
  try {
    const { restoreAfterExec } = await import('../dist/cpr/index.bundle.js'); // tools/bundle.mjs
    await restoreAfterExec(entryTime, early);
  } catch (e) {
    process.stderr.write(`minivmm: cannot restore the VM after exec: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  }
} else {
  let main;
  try { ({ main } = await import('../dist/cli/main.js')); } catch (e) {
    process.stderr.write(`minivmm: cannot load the build in dist/ (run npm run build): ${e instanceof Error ? e.message.split('\n')[0] : String(e)}\n`);
    process.exit(1);
  }
  await main(process.argv.slice(2));
}
