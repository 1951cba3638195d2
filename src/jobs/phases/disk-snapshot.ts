import { ForksnapError, errorMessage } from '../../errors.js';
import type { QmpClient } from '../../qmp/client.js';
import type { DiskSnapshot } from '../../snapshot/disk-backend.js';

/**
 * The disk-snapshot step, run by the capture strategy while the parent is halted (paused, its I/O
 * drained and flushed). Every ms here is parent downtime: no journal write, no file creation.
 * Ordering rules:
 * - all disks freeze at the same instant: the QMP actions of every disk (TEAM.md interface 5,
 *   `haltActions()`) go into ONE `transaction`, which QEMU applies atomically or not at all;
 * - then every snapshot's `commitAtHalt` (what must follow the freeze, e.g. a reflink clone), all
 *   disks at once;
 * - the crash-consistent copies (`--keep-crash-image`) last, still at the halt.
 * An undo a snapshot returns from `commitAtHalt` is collected in `haltUndos`; the job registered
 * the slot that runs them before the halt (see capture.ts), so they unwind after "resume the parent".
 */
export interface QmpTransactionAction {
  readonly type: string;
  readonly data: object;
}

export interface HaltUndo {
  readonly disk: string;
  readonly run: () => Promise<void>;
}

export async function snapshotDisksAtHalt(
  parent: QmpClient,
  snapshots: readonly DiskSnapshot[],
  haltUndos: HaltUndo[],
  options: { keepCrashImage: boolean; signal: AbortSignal },
): Promise<void> {
  const { signal } = options;
  const actions = snapshots.flatMap((snapshot) => snapshot.haltActions?.() ?? []);
  if (actions.length > 0) {
    try {
      await parent.execute('transaction', { actions }, { signal });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw new ForksnapError('DISK_SNAPSHOT_FAILED', `freezing the disks (${snapshots.map((s) => s.disk.id).join(', ')}) in one QMP transaction failed: ${errorMessage(error)}`, { disks: snapshots.map((s) => s.disk.id), actions: actions.map((a) => a.type) }, { cause: error });
    }
  }
  // Every disk at once: their QMP commands are pipelined (QEMU still runs them one after the
  // other), so the halt costs one round trip, not one per disk. Each undo that a commit returned
  // is kept, also when another disk failed.
  const committed = await Promise.allSettled(snapshots.map((snapshot) => snapshot.commitAtHalt(signal)));
  committed.forEach((outcome, index) => {
    if (outcome.status === 'fulfilled' && outcome.value.undo) haltUndos.push({ disk: snapshots[index]!.disk.id, run: outcome.value.undo });
  });
  const failed = committed.find((outcome): outcome is PromiseRejectedResult => outcome.status === 'rejected');
  if (failed) throw failed.reason;
  if (options.keepCrashImage) for (const snapshot of snapshots) await snapshot.keepCrashImage?.(signal);
}
