import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { ForksnapError } from '../errors.js';
import { haltParent } from '../forker/halt-then-migrate.js';
import { applyMigrationSettings, FAST_BANDWIDTH } from '../forker/migration-config.js';
import { ensureParentRunning } from '../jobs/ensure-parent-running.js';
import type { QmpClient } from '../qmp/client.js';
import type { QmpEvent } from '../qmp/events.js';
import { migrationInfo } from '../qmp/schemas.js';
import { snapshotFormat, type DiskSnapshot } from '../snapshot/disk-backend.js';
import { overlayBackend } from '../snapshot/overlay-backend.js';
import { reflinkBackend } from '../snapshot/reflink-backend.js';
import { describeImage } from '../snapshot/store.js';
import { sleep } from '../util/abort.js';
import { roundMs } from '../util/round-ms.js';
import { UndoStack, type UndoHandle } from '../util/undo-stack.js';
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
  let succeeded = false;
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
    let settingsUndo: UndoHandle | undefined;
    if (name === 'stop-the-world') {
      restoreSettings = await applyMigrationSettings(parent, { capabilities: {}, parameters: { 'max-bandwidth': FAST_BANDWIDTH } }, signal);
      settingsUndo = undo.push('restore migration settings', restoreSettings);
    }
    // Registered before the disk snapshots are taken, so on unwinding the parent resumes first.
    const haltUndos: (() => Promise<void>)[] = [];
    undo.push('undo the disk snapshots taken at the halt', async () => {
      for (const merge of haltUndos.reverse()) await merge();
    }, { when: 'on-failure' });
    undo.push('resume the parent', () => ensureParentRunning(parent, options.parentSocket, log, { pausedByUs: true, ownsMigration: name === 'stop-the-world' }), { when: 'on-failure' });
    // Registered before `stop`: STOP, and the RESUME after `cont`.
    const runState = parent.listen(['STOP', 'RESUME']);
    let stop: QmpEvent;
    let resumed: QmpEvent;
    let stateCompleteAtMs: number | undefined;
    let stateFileBytes: number | undefined;
    try {
      stop = await haltParent(parent, signal, runState);
      for (const snapshot of snapshots) {
        const { undo: merge } = await snapshot.commitAtHalt(signal);
        if (merge) haltUndos.push(merge);
      }
      if (name === 'stop-the-world') {
        const stateFile = path.join(workDir, 'state.migration');
        await parent.execute('migrate', { uri: `exec:cat > '${stateFile}'` }, { signal });
        await waitForMigrationCompleted(parent, signal);
        stateCompleteAtMs = Date.now();
        stateFileBytes = (await stat(stateFile)).size;
      }
      await parent.execute('cont', undefined, { signal });
      resumed = await runState.next((event) => event.event === 'RESUME', signal);
    } finally {
      runState.close();
    }
    if (restoreSettings) {
      await restoreSettings();
      settingsUndo?.release();
    }
    for (const snapshot of snapshots) {
      const dest = path.join(workDir, `${snapshot.disk.id}.image.${snapshotFormat(snapshot.disk)}`);
      await snapshot.materialise(dest, signal, () => {});
      await describeImage(dest, snapshotFormat(snapshot.disk), signal);
    }
    const imageReadyAtMs = Date.now();
    for (const snapshot of snapshots) await snapshot.finish(signal, () => {});
    succeeded = true;
    return {
      haltedAtMs: stop.timestampMs,
      resumedAtMs: resumed.timestampMs,
      downtimeMs: roundMs(resumed.timestampMs - stop.timestampMs),
      stateCompleteAtMs,
      imageReadyAtMs,
      stateFileBytes,
      consistency: name === 'stop-the-world' ? 'RAM + disk (resumable)' : 'crash-consistent',
    };
  } finally {
    const failed = await undo.unwind({ failed: !succeeded, signal: AbortSignal.timeout(10 * 60_000) });
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
