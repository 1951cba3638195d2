import { access } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { REPO } from './helpers/forksnap-cli.js';

/**
 * Integration tests need real QEMU, the built CLI and the test guest. Missing QEMU is a failure
 * with a clear message, never a quiet skip (.ci/run installs it).
 */
export default async function setup(): Promise<void> {
  const qemu = await execa('qemu-system-x86_64', ['--version'], { reject: false });
  if (qemu.exitCode !== 0) throw new Error('qemu-system-x86_64 is not installed: run `bash .ci/run` (or apt-get install qemu-system-x86 qemu-utils) first');
  await access(path.join(REPO, 'dist', 'cli', 'main.js')).catch(() => {
    throw new Error('dist/ is missing: run `npm run build` first (npm test does it)');
  });
}
