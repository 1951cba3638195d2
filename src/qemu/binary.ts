import { access, readdir, stat } from 'node:fs/promises';
import { constants } from 'node:fs';
import path from 'node:path';
import { qemuBuildsDir, type Paths } from '../config.js';

/**
 * The qemu-system-x86_64 that `forksnap vm start` uses, in this order:
 *   1. $FORKSNAP_QEMU (an explicit binary);
 *   2. the newest patched build under <cache>/qemu/<version>-<patch hash>/bin (scripts/build-qemu.sh),
 *      which adds the fork strategy;
 *   3. qemu-system-x86_64 on PATH (stock QEMU: background-snapshot and precopy).
 * A child QEMU always runs the parent's own binary (/proc/PID/exe), never this choice.
 */
export async function resolveQemuBinary(paths: Paths): Promise<string> {
  if (process.env.FORKSNAP_QEMU) return process.env.FORKSNAP_QEMU;
  const patched = await newestPatchedBuild(paths);
  return patched ?? 'qemu-system-x86_64';
}

export async function newestPatchedBuild(paths: Paths): Promise<string | undefined> {
  const root = qemuBuildsDir(paths);
  let entries: string[] = [];
  try {
    entries = await readdir(root);
  } catch {
    return undefined;
  }
  const candidates: { file: string; mtime: number }[] = [];
  for (const entry of entries) {
    if (entry.startsWith('.')) continue;
    const file = path.join(root, entry, 'bin', 'qemu-system-x86_64');
    try {
      await access(file, constants.X_OK);
      candidates.push({ file, mtime: (await stat(file)).mtimeMs });
    } catch {
      // incomplete build
    }
  }
  return candidates.sort((a, b) => b.mtime - a.mtime)[0]?.file;
}
