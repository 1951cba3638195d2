import { access, readdir, rm, statfs } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { REPO } from './helpers/forksnap-cli.js';
import { ensureXfsMount } from './helpers/xfs.js';

/** Free space the integration run needs on the XFS test filesystem (the DB suites use ~2 GiB at most). */
const XFS_NEEDED_BYTES = 4 * 1024 ** 3;

/**
 * Integration tests need real QEMU, the built CLI and the test guest. Missing QEMU is a failure
 * with a clear message, never a quiet skip (.ci/run installs it).
 *
 * The XFS test filesystem outlives a run (a loop image under /var/tmp): it is emptied here, before
 * any test uses it, so that directories kept by an earlier run's failed tests (or by a run that was
 * killed) cannot fill it; then it must have room for this run.
 */
export default async function setup(): Promise<void> {
  const qemu = await execa('qemu-system-x86_64', ['--version'], { reject: false });
  if (qemu.exitCode !== 0) throw new Error('qemu-system-x86_64 is not installed: run `bash .ci/run` (or apt-get install qemu-system-x86 qemu-utils) first');
  await access(path.join(REPO, 'dist', 'cli', 'main.js')).catch(() => {
    throw new Error('dist/ is missing: run `npm run build` first (npm test does it)');
  });
  const xfs = await ensureXfsMount();
  for (const name of await readdir(xfs)) await rm(path.join(xfs, name), { recursive: true, force: true });
  const fs = await statfs(xfs);
  if (fs.bavail * fs.bsize < XFS_NEEDED_BYTES) throw new Error(`the XFS test filesystem ${xfs} has ${Math.round((fs.bavail * fs.bsize) / 1024 ** 2)} MiB free after emptying it; the integration run needs ${XFS_NEEDED_BYTES / 1024 ** 3} GiB`);
}
