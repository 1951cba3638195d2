import { rm } from 'node:fs/promises';
import { afterEach } from 'vitest';

/**
 * A test block's scratch directory (guest disks, state dir, snapshots: hundreds of MiB on the shared
 * XFS test filesystem) is removed once the block is done, unless one of its tests failed: then it
 * is kept for a look (and the next integration run's sweep, test/global-setup.ts, removes it).
 * Call inside the describe block; call `remove(root)` last in its afterAll.
 */
export function keepRootOnFailure(): { remove: (root: string | undefined) => Promise<void> } {
  let failed = false;
  afterEach((context) => {
    if (context.task.result?.state === 'fail') failed = true;
  });
  return {
    remove: async (root) => {
      if (root && !failed) await rm(root, { recursive: true, force: true });
    },
  };
}
