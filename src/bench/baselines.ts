import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { ForksnapError } from '../errors.js';
import { haltParent } from '../forker/halt-then-migrate.js';
import { applyMigrationSettings, FAST_BANDWIDTH } from '../forker/migration-config.js';
import { ensureParentRunning } from '../jobs/ensure-parent-running.js';
import { round } from '../jobs/phase-runner.js';
import type { QmpClient } from '../qmp/client.js';
import { migrationInfo } from '../qmp/schemas.js';
import { snapshotFormat, type DiskSnapshot } from '../snapshot/disk-backend.js';
import { overlayBackend } from '../snapshot/overlay-backend.js';
import { reflinkBackend } from '../snapshot/reflink-backend.js';
import { describeImage } from '../snapshot/store.js';
import { sleep } from '../util/abort.js';
import { UndoStack } from '../util/undo-stack.js';
import { inspectVm } from '../vm/inspect.js';

/**
 * The benchmark's two baselines, on the same running parent and the same disk backends as a
 * forksnap job (reflink where the filesystem has it, else the qcow2 overlay):
 *   stop-the-world  stop, snapshot the disks, migrate the whole state into a file (`exec:cat > FILE`,
 *                   max-bandwidth FAST_BANDWIDTH like every strategy), cont. A resumable memory +
 *                   disk snapshot; the guest is paused for all of it.
 *   disk-only       stop, snapshot the disks, cont: crash-consistent, no RAM state.
 * Then the disk images are written out (as a job's materialise phase does) and the parent goes back
 * onto its own files. The downtime comes from QEMU's STOP and RESUME event timestamps.
 */
export type BaselineName = 'stop-the-world' | 'disk-only';

export interface BaselineResult {
  readonly haltedAtMs: number;
  readonly resumedAtMs: number;
  readonly downtimeMs: number;
  /** When the state file was complete (stop-the-world only). */
  readonly stateCompleteAtMs: number | undefined;
  readonly imageReadyAtMs: number;
  readonly stateFileBytes: number | undefined;
  readonly consistency: string;
}

export interface BaselineOptions {
  readonly parent: QmpClient;
  readonly parentPid: number;
  readonly parentSocket: string;
  /** Emptied and removed afterwards. */
  readonly workDir: string;
  readonly jobId: string;
  readonly log: Logger;
  readonly signal: AbortSignal;
}

export async function runBaseline(name: BaselineName, options: BaselineOptions): Promise<BaselineResult> {
  const { parent, signal, workDir } = options;
  const log = options.log.child({ baseline: name, job: options.jobId });
  const undo = new UndoStack(log);
  try {
    const inventory = await inspectVm(options.parentPid, parent, signal);
    await mkdir(workDir, { recursive: true });
    undo.push('remove work dir', () => rm(workDir, { recursive: true, force: true }));
    const snapshots: DiskSnapshot[] = [];
    for (const disk of inventory.disks) {
      const context = { parent, workDir, jobId: options.jobId, log };
      const snapshot = (await reflinkBackend.prepare(disk, context, signal)) ?? (await overlayBackend.prepare(disk, context, signal));
      if (!snapshot) throw new ForksnapError('DISK_BACKEND_UNSUPPORTED', `no disk backend can snapshot ${disk.id} (${disk.file})`, { disk: disk.id });
      undo.push(`discard snapshot files of ${disk.id}`, () => snapshot.discard());
      snapshots.push(snapshot);
    }
    let restoreSettings: (() => Promise<void>) | undefined;
    if (name === 'stop-the-world') {
      restoreSettings = await applyMigrationSettings(parent, { capabilities: {}, parameters: { 'max-bandwidth': FAST_BANDWIDTH } }, signal);
      undo.push('restore migration settings', restoreSettings);
    }
    const resume = () => ensureParentRunning(parent, options.parentSocket, log);
    undo.push('resume the parent', resume);
    const stop = await haltParent(parent, signal);
    for (const snapshot of snapshots) {
      const { undo: merge } = await snapshot.commitAtHalt(signal);
      if (merge) undo.push(`merge the parent overlay of ${snapshot.disk.id}`, merge);
    }
    // Resuming the parent comes first when unwinding, before any merge.
    undo.push('resume the parent', resume);
    let stateCompleteAtMs: number | undefined;
    let stateFileBytes: number | undefined;
    if (name === 'stop-the-world') {
      const stateFile = path.join(workDir, 'state.migration');
      await parent.execute('migrate', { uri: `exec:cat > '${stateFile}'` }, { signal });
      await waitForMigrationCompleted(parent, signal);
      stateCompleteAtMs = Date.now();
      stateFileBytes = (await stat(stateFile)).size;
    }
    const resumeSince = Date.now() - 1;
    await parent.execute('cont', undefined, { signal });
    const resumed = await parent.waitForEvent((event) => event.event === 'RESUME', signal, resumeSince);
    undo.release('resume the parent');
    undo.release('resume the parent');
    if (restoreSettings) {
      await restoreSettings();
      undo.release('restore migration settings');
    }
    for (const snapshot of snapshots) {
      const dest = path.join(workDir, `${snapshot.disk.id}.image.${snapshotFormat(snapshot.disk)}`);
      await snapshot.materialise(dest, signal, () => {});
      await describeImage(dest, snapshotFormat(snapshot.disk), signal);
    }
    const imageReadyAtMs = Date.now();
    for (const snapshot of snapshots) {
      await snapshot.finish(signal, () => {});
      undo.release(`merge the parent overlay of ${snapshot.disk.id}`);
    }
    return {
      haltedAtMs: stop.timestampMs,
      resumedAtMs: resumed.timestampMs,
      downtimeMs: round(resumed.timestampMs - stop.timestampMs),
      stateCompleteAtMs,
      imageReadyAtMs,
      stateFileBytes,
      consistency: name === 'stop-the-world' ? 'RAM + disk (resumable)' : 'crash-consistent',
    };
  } finally {
    const failed = await undo.unwind();
    if (failed.length) log.error({ failed }, 'baseline clean-up steps failed');
  }
}

async function waitForMigrationCompleted(parent: QmpClient, signal: AbortSignal): Promise<void> {
  for (;;) {
    const info = await parent.execute('query-migrate', undefined, { signal, schema: migrationInfo });
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new ForksnapError('CAPTURE_FAILED', `migration into the state file ${info.status}: ${info['error-desc'] ?? 'no reason given'}`, { migrationStatus: info.status });
    }
    await sleep(20, signal);
  }
}
