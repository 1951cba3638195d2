import { randomBytes } from 'node:crypto';
import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { vmDir, workRoot, type Paths } from '../config.js';
import { ForksnapError, errorMessage, isForksnapError } from '../errors.js';
import { chooseStrategy } from '../forker/choose-strategy.js';
import { backgroundSnapshotStrategy } from '../forker/halt-then-migrate.js';
import { applyMigrationSettings, FAST_BANDWIDTH } from '../forker/migration-config.js';
import type { CaptureResult, StrategyName } from '../forker/strategy.js';
import { buildChildArgv, type ChildDisk } from '../isolation/child-command-line.js';
import { driveShutdown } from '../isolation/drive-shutdown.js';
import { isolateChild } from '../isolation/isolate-child.js';
import { QmpClient } from '../qmp/client.js';
import { blockJobInfoList, migrationInfo, statusInfo } from '../qmp/schemas.js';
import type { DiskBackendName, DiskSnapshot } from '../snapshot/disk-backend.js';
import { snapshotFormat } from '../snapshot/disk-backend.js';
import { overlayBackend } from '../snapshot/overlay-backend.js';
import { reflinkBackend } from '../snapshot/reflink-backend.js';
import { beginSnapshot, describeImage, listSnapshots, type SnapshotMeta } from '../snapshot/store.js';
import { UndoStack } from '../util/undo-stack.js';
import { validateName } from '../validate-name.js';
import { inspectVm } from '../vm/inspect.js';
import { loadVm } from '../vm/registry.js';
import { ChildSlot } from './child-slot.js';
import { ensureParentRunning } from './ensure-parent-running.js';
import { JobEventStream } from './events.js';
import { JobJournal } from './journal.js';
import { recoverInterruptedJobs } from './recover-job.js';
import { PhaseRunner } from './phase-runner.js';
import { lockVm } from './vm-lock.js';

export interface SnapshotJobTimeouts {
  preflightMs: number;
  prepareMs: number;
  haltMs: number;
  diskSnapshotMs: number;
  captureMs: number;
  isolateMs: number;
  shutdownMs: number;
  materialiseMs: number;
  mergeMs: number;
}

export const DEFAULT_TIMEOUTS: SnapshotJobTimeouts = {
  preflightMs: 30_000,
  prepareMs: 90_000,
  haltMs: 30_000,
  diskSnapshotMs: 30_000,
  captureMs: 30 * 60_000,
  isolateMs: 30_000,
  shutdownMs: 120_000,
  materialiseMs: 60 * 60_000,
  mergeMs: 60 * 60_000,
};

export interface SnapshotJobOptions {
  readonly vm: string;
  readonly snapshotId?: string | undefined;
  readonly jobId?: string | undefined;
  readonly strategy?: StrategyName | 'auto';
  readonly diskBackend?: DiskBackendName | 'auto';
  /** Also keep the disks as they were at the halt (crash-consistent), for comparison. */
  readonly keepCrashImage?: boolean;
  readonly labels?: Record<string, string>;
  /** Migration bandwidth cap in bytes/s, to limit the capture's load on the host (default: unlimited). */
  readonly maxBandwidth?: number | undefined;
  readonly timeouts?: Partial<SnapshotJobTimeouts>;
  readonly paths: Paths;
  readonly log: Logger;
  readonly signal: AbortSignal;
  readonly events?: JobEventStream;
}

export function newJobId(): string {
  return `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
}

/**
 * A fully consistent snapshot of a running VM, phase by phase:
 *   preflight -> prepare (disk files, child QEMU waiting with -incoming) -> halt -> disk-snapshot
 *   -> capture (parent resumes) -> isolate -> shutdown (the child guest powers off) -> materialise
 *   -> merge (the parent back on its own files).
 * Undo is registered as each step succeeds; on any failure, timeout or cancellation it unwinds in
 * reverse: the parent resumed first, overlays merged back, the child killed, temporary files removed.
 */
export async function runSnapshotJob(options: SnapshotJobOptions): Promise<SnapshotMeta> {
  const job = options.jobId ?? newJobId();
  const events = options.events ?? new JobEventStream(job);
  const timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  const log = options.log.child({ vm: options.vm, job });
  const undo = new UndoStack(log);
  const phases = new PhaseRunner(events, log, options.signal, { vm: options.vm, job });
  const started = Date.now();
  let parent: QmpClient | undefined;
  let parentSocket = '';
  let failed = false;
  let journal: JobJournal | undefined;
  try {
    const pre = await phases.run('preflight', timeouts.preflightMs, async ({ signal }) => {
      const record = await loadVm(options.paths, options.vm);
      const snapshotId = options.snapshotId ? validateName('snapshot', options.snapshotId) : await defaultSnapshotId(options.paths, options.vm);
      // A job on this VM whose process died left a journal: unwind it before anything else.
      for (const recovered of await recoverInterruptedJobs(options.paths, log, options.vm)) {
        log.warn(recovered, 'recovered an interrupted earlier job on this VM');
      }
      undo.push('unlock VM', await lockVm(options.paths, options.vm, job));
      parentSocket = record.qmpSocket;
      journal = new JobJournal(options.paths, { job, vm: options.vm, parentSocket });
      await journal.update(() => ({}));
      const written = journal;
      events.subscribe((event) => {
        if (event.type === 'phase-start') written.update(() => ({ phase: event.phase })).catch(() => {});
      });
      if (!record.pid) throw new ForksnapError('VM_NOT_RUNNING', `VM "${options.vm}" has no known QEMU pid; re-attach it with --pid`, { vm: options.vm });
      parent = await QmpClient.connect(record.qmpSocket, { log, signal }).catch((error: unknown) => {
        throw new ForksnapError('VM_NOT_RUNNING', `VM "${options.vm}" does not answer on its QMP socket ${record.qmpSocket}: ${errorMessage(error)}`, { vm: options.vm }, { cause: error });
      });
      const connected = parent;
      undo.push('close parent QMP', () => connected.close());
      await refuseUnlessRunning(connected, options.vm, signal);
      const inventory = await inspectVm(record.pid, connected, signal);
      if (inventory.disks.length === 0) throw new ForksnapError('INVALID_INPUT', `VM "${options.vm}" has no writable disk: there is nothing to snapshot`, { vm: options.vm });
      const staleMarker = path.join(vmDir(options.paths, options.vm), 'write-tracking-stale');
      const stale = await access(staleMarker).then(() => true, () => false);
      const { strategy } = await chooseStrategy(connected, stale && (options.strategy ?? 'auto') === 'auto' ? 'background-snapshot' : options.strategy ?? 'auto', signal);
      if (stale && strategy.name !== 'background-snapshot') {
        throw new ForksnapError('STRATEGY_UNSUPPORTED', `VM "${options.vm}": a failed background snapshot left QEMU 7.2's write-tracking flag set on the guest RAM (an upstream bug), so a ${strategy.name} capture would send a corrupt stream; take a background-snapshot (it resets the flag) or restart the VM`, { vm: options.vm, strategy: strategy.name });
      }
      return { record, snapshotId, inventory, strategy, parent: connected, staleMarker };
    });
    parent = pre.parent;
    const { inventory, strategy, snapshotId } = pre;
    const workDir = path.join(workRoot(options.paths), job);
    const migrationUri = `unix:${path.join(workDir, 'migrate.sock')}`;
    const childQmpSocket = path.join(workDir, 'child-qmp.sock');
    const migrationParameters = { 'max-bandwidth': options.maxBandwidth ?? FAST_BANDWIDTH };
    let restoreMigrationSettings: () => Promise<void> = async () => {};
    let fallback: { from: string; reason: string } | undefined;

    const prepared = await phases.run('prepare', timeouts.prepareMs, async ({ signal, log: phaseLog }) => {
      await journal!.update(() => ({ workDir }));
      await mkdir(workDir, { recursive: true });
      undo.push('remove work dir', () => rm(workDir, { recursive: true, force: true }));
      const snapshots: DiskSnapshot[] = [];
      for (const disk of inventory.disks) {
        const context = { parent: pre.parent, workDir, jobId: job, log: phaseLog };
        const wanted = options.diskBackend ?? 'auto';
        let snapshot = wanted === 'qcow2-overlay' ? undefined : await reflinkBackend.prepare(disk, context, signal);
        if (!snapshot && wanted === 'reflink') {
          throw new ForksnapError('DISK_BACKEND_UNSUPPORTED', `disk ${disk.id} (${disk.file}) is not on a filesystem with reflink support (XFS with reflink=1, btrfs); use --disk-backend auto or qcow2-overlay`, { disk: disk.id, file: disk.file });
        }
        snapshot ??= await overlayBackend.prepare(disk, context, signal);
        if (!snapshot) throw new ForksnapError('DISK_BACKEND_UNSUPPORTED', `no disk backend can snapshot ${disk.id} (${disk.file})`, { disk: disk.id });
        const made = snapshot;
        await journal!.update((entry) => ({ tempFiles: [...entry.tempFiles, ...made.tempFiles] }));
        undo.push(`discard snapshot files of ${disk.id}`, () => made.discard());
        snapshots.push(made);
      }
      const childDisks = new Map<string, ChildDisk>(snapshots.map((snapshot) => [snapshot.disk.id, snapshot.child]));
      const slot = new ChildSlot(buildChildArgv(inventory, childDisks, childQmpSocket), childQmpSocket, migrationUri, log.child({ role: 'child' }), (pid) =>
        journal!.update(() => ({ childPid: pid, childArgv0: inventory.exe })));
      undo.push('stop the child QEMU', () => slot.stop());
      await slot.start(pre.parent, signal, { verify: true });
      restoreMigrationSettings = await applyMigrationSettings(pre.parent, { capabilities: strategy.capabilities, parameters: migrationParameters }, signal);
      undo.push('restore parent migration settings', () => restoreMigrationSettings());
      return { snapshots, slot };
    });
    const { snapshots, slot } = prepared;
    events.emit({ type: 'job-started', vm: options.vm, strategy: strategy.name, diskBackends: Object.fromEntries(snapshots.map((s) => [s.disk.id, s.backend])) });

    const resumeParent = async () => {
      await ensureParentRunning(parent, parentSocket, log);
      await journal?.update(() => ({ halted: false }));
    };
    undo.push('resume the parent', resumeParent);
    // Journaled before the halt, not in it (every ms there is parent downtime): recovery checks
    // whether the parent really is on an overlay before merging.
    await journal!.update((entry) => ({
      halted: true,
      overlays: snapshots.filter((s) => s.parentOverlay).map((s) => ({ disk: s.disk.id, overlayNode: s.parentOverlay!.node, baseNode: s.disk.nodeName, overlayFile: s.parentOverlay!.file, baseFile: s.disk.file })).concat(entry.overlays),
    }));
    let downtimeMs = Number.NaN;
    const capture: CaptureResult = await strategy.run({
      parent: pre.parent,
      child: slot.qmp!,
      childProcess: slot.process!,
      parentPid: inventory.pid,
      migrationUri,
      phases,
      timeouts: { haltMs: timeouts.haltMs, diskSnapshotMs: timeouts.diskSnapshotMs, captureMs: timeouts.captureMs },
      log,
      atHalt: async (signal) => {
        for (const snapshot of snapshots) {
          const { undo: merge } = await snapshot.commitAtHalt(signal);
          // The child holds the frozen base image open (read-only): it must be gone before the merge can write it.
          if (merge) undo.push(`merge the parent overlay of ${snapshot.disk.id}`, async () => {
            await slot.stop();
            await merge();
          });
        }
        // Resuming the parent comes first when unwinding, before any merge.
        undo.push('resume the parent', resumeParent);
        if (options.keepCrashImage) for (const snapshot of snapshots) await snapshot.keepCrashImage?.(signal);
      },
      fallBackToBackgroundSnapshot: async (reason, signal) => {
        // fork() was refused before any state left the parent, which is still halted with its disks
        // snapshotted: retry on a fresh child (the old one's incoming migration is spoiled).
        fallback = { from: strategy.name, reason };
        events.emit({ type: 'strategy-fallback', from: strategy.name, to: 'background-snapshot', reason });
        log.warn({ reason }, 'fork capture failed before the fork; falling back to background-snapshot');
        await slot.stop();
        await restoreMigrationSettings();
        restoreMigrationSettings = await applyMigrationSettings(pre.parent, { capabilities: backgroundSnapshotStrategy.capabilities, parameters: migrationParameters }, signal);
        const started = await slot.start(pre.parent, signal, { verify: false });
        return { child: started.qmp, childProcess: started.process };
      },
      markWriteTrackingStale: () => writeFile(pre.staleMarker, `${new Date().toISOString()} job ${job}\n`),
      parentResumed: (ms) => {
        downtimeMs = ms;
        events.emit({ type: 'parent-resumed', downtimeMs: ms });
      },
    });
    await resumeParent();
    if (capture.strategy === 'background-snapshot') await rm(pre.staleMarker, { force: true });
    await restoreMigrationSettings();
    undo.release('restore parent migration settings');
    const child = slot.qmp!;
    const childProcess = slot.process!;

    await phases.run('isolate', timeouts.isolateMs, ({ signal }) => isolateChild(child, signal));
    const outcome = await phases.run('shutdown', timeouts.shutdownMs * 2 + 60_000, ({ signal, log: phaseLog, progress }) =>
      driveShutdown(child, childProcess, { timeoutMs: timeouts.shutdownMs, signal, log: phaseLog, onProgress: (message) => progress({ message }) }));
    events.emit({ type: 'verdict', consistency: outcome.consistency, reason: outcome.reason });
    await slot.stop();

    const target = await beginSnapshot(options.paths, snapshotId);
    await journal!.update(() => ({ partialSnapshotDir: target.dir }));
    undo.push('remove the partial snapshot', target.abort);
    const disks = await phases.run('materialise', timeouts.materialiseMs, async ({ signal, progress }) => {
      const results: SnapshotMeta['disks'] = [];
      const steps = snapshots.length * (options.keepCrashImage ? 2 : 1);
      let step = 0;
      const report = (what: string) => (percent: number) => progress({ percent: ((step + percent / 100) / steps) * 100, message: what });
      for (const snapshot of snapshots) {
        const format = snapshotFormat(snapshot.disk);
        const dest = path.join(target.dir, `${snapshot.disk.id}.${format}`);
        await snapshot.materialise(dest, signal, report(`${snapshot.disk.id}: writing the image`));
        step++;
        const image = await describeImage(dest, format, signal);
        let crashImage: SnapshotMeta['disks'][number]['crashImage'];
        if (options.keepCrashImage && snapshot.materialiseCrashImage) {
          const crashDest = path.join(target.dir, `${snapshot.disk.id}.crash.${format}`);
          await snapshot.materialiseCrashImage(crashDest, signal, report(`${snapshot.disk.id}: writing the crash-consistent image`));
          step++;
          crashImage = await describeImage(crashDest, format, signal);
        }
        results.push({ id: snapshot.disk.id, source: snapshot.disk.file, sourceFormat: snapshot.disk.format, virtualSize: snapshot.disk.virtualSize, backend: snapshot.backend, image, ...(crashImage ? { crashImage } : {}) });
      }
      progress({ percent: 100 });
      return results;
    });
    const imageReadyAt = Date.now();
    await phases.run('merge', timeouts.mergeMs, async ({ signal, progress }) => {
      for (const snapshot of snapshots) await snapshot.finish(signal, (percent) => progress({ percent, message: `${snapshot.disk.id}: merging the parent overlay back` }));
    });
    const meta: SnapshotMeta = {
      version: 1,
      id: snapshotId,
      vm: options.vm,
      createdAt: new Date(capture.haltedAtMs).toISOString(),
      strategy: capture.strategy,
      ...(fallback ? { strategyFallback: fallback } : {}),
      consistency: outcome.consistency,
      consistencyReason: outcome.reason,
      parentDowntimeMs: downtimeMs,
      timeToStateMs: Math.round(capture.stateCompleteAtMs - capture.haltedAtMs),
      timeToImageMs: Math.round(imageReadyAt - capture.haltedAtMs),
      phasesMs: phases.durations as Record<string, number>,
      disks,
      labels: options.labels ?? {},
      qemu: { binary: inventory.exe, version: pre.parent.version ? `${pre.parent.version.major}.${pre.parent.version.minor}.${pre.parent.version.micro}` : 'unknown' },
      job,
    };
    await target.commit(meta);
    undo.release('remove the partial snapshot');
    events.emit({ type: 'job-done', snapshotId, consistency: outcome.consistency, downtimeMs, durationMs: Date.now() - started });
    return meta;
  } catch (error) {
    failed = true;
    const code = isForksnapError(error) ? error.code : 'INTERNAL';
    events.emit({ type: 'job-failed', code, message: errorMessage(error), phase: phases.current });
    throw error;
  } finally {
    const failedUndos = await phases.run('cleanup', 10 * 60_000, () => undo.unwind()).catch((error: unknown) => {
      log.error({ err: errorMessage(error) }, 'cleanup failed');
      return ['cleanup'];
    });
    if (failedUndos.length > 0) log.error({ failedUndos, jobFailed: failed }, 'some clean-up steps failed; the journal is kept so the next job on this VM (or the daemon) retries them');
    else await journal?.remove();
  }
}

async function refuseUnlessRunning(parent: QmpClient, vm: string, signal: AbortSignal): Promise<void> {
  const status = await parent.execute('query-status', undefined, { signal, schema: statusInfo });
  if (!status.running || status.status !== 'running') {
    throw new ForksnapError('VM_NOT_RUNNING', `VM "${vm}" is ${status.status}, not running: forksnap only snapshots a running VM (it would not know whether to resume it)`, { vm, status: status.status });
  }
  const migration = await parent.execute('query-migrate', undefined, { signal, schema: migrationInfo });
  if (migration.status && !['none', 'completed', 'failed', 'cancelled'].includes(migration.status)) {
    throw new ForksnapError('VM_NOT_RUNNING', `VM "${vm}" is migrating (status ${migration.status}); try again when the migration is over`, { vm, migrationStatus: migration.status });
  }
  const jobs = await parent.execute('query-block-jobs', undefined, { signal, schema: blockJobInfoList });
  if (jobs.length > 0) {
    throw new ForksnapError('VM_BUSY', `VM "${vm}" has block jobs running (${jobs.map((j) => `${j.type} ${j.device}`).join(', ')}); they would write during the snapshot`, { vm, blockJobs: jobs });
  }
}

export async function defaultSnapshotId(paths: Paths, vm: string): Promise<string> {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-');
  const taken = new Set((await listSnapshots(paths)).map((meta) => meta.id));
  let id = `${vm}-${stamp}`.slice(0, 60);
  for (let n = 2; taken.has(id); n++) id = `${vm}-${stamp}-${n}`.slice(0, 64);
  return id;
}
