import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    // Tests start VMs and device daemons; two cores: keep files sequential.
    fileParallelism: false,
    // A private build copy and TMPDIR per run; each file must leave the TMPDIR empty.
    globalSetup: ['test/run-setup.ts'],
    setupFiles: ['test/leftovers.ts'],
    reporters: ['default'],
  },
});
