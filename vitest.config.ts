import { defineConfig } from 'vitest/config';

// Integration tests boot real QEMU guests under TCG on a 2-core machine: files run one at a time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 300_000,
    globalSetup: ['test/global-setup.ts'],
    reporters: ['default'],
  },
});
