import path from 'node:path';
import { execa } from 'execa';
import type { QemuBase } from '../../src/qemu/binary.js';
import { REPO } from './forksnap-cli.js';

/**
 * The patched QEMU of one base version (7.2 or 10.0) built for the patches now in patches/qemu-<base>/
 * (scripts/build-qemu.sh's cache key), never an older build that happens to be in the cache. A
 * suite that needs it fails with the command to run when it is not built: it never skips.
 */
export async function patchedQemu(base: QemuBase): Promise<string> {
  const result = await execa('bash', [path.join(REPO, 'scripts', 'build-qemu.sh'), base], { reject: false, env: { FORKSNAP_QEMU_CACHED_ONLY: '1' } });
  const prefix = result.stdout.trim().split('\n').at(-1) ?? '';
  if (result.exitCode !== 0 || !prefix) {
    throw new Error(`the patched QEMU ${base} is not built for the current patches/qemu-${base}/: run \`bash scripts/build-qemu.sh ${base}\` (bash scripts/setup.sh builds both)\n${result.stderr.trim()}`);
  }
  return path.join(prefix, 'bin', 'qemu-system-x86_64');
}
