import { ForksnapError, errorMessage } from '../../errors.js';
import type { QmpClient } from '../../qmp/client.js';
import type { DiskSnapshot } from '../../snapshot/disk-backend.js';

/**
 * The disk-snapshot step, run by the capture strategy while the parent is halted (paused, its I/O
 * drained and flushed). Every ms here is parent downtime: no journal write, no file creation.
 * Ordering rules:
 * - all disks freeze at the same instant: the QMP actions of every disk (TEAM.md interface 5,
 *   `haltActions()`) go into ONE `transaction`, which QEMU applies atomically or not at all;
 * - then each snapshot's `commitAtHalt` (what must follow the freeze, e.g. a reflink clone);
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
  for (const snapshot of snapshots) {
    const { undo } = await snapshot.commitAtHalt(signal);
    if (undo) haltUndos.push({ disk: snapshot.disk.id, run: undo });
  }
  if (options.keepCrashImage) for (const snapshot of snapshots) await snapshot.keepCrashImage?.(signal);
}
