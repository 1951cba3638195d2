import { errorMessage, isForksnapError } from '../errors.js';
import type { SnapshotMeta } from '../snapshot/store.js';
import { UndoStack } from '../util/undo-stack.js';
import { JobEventStream, type JobResultFields } from './events.js';
import { newJobId } from './job-id.js';
import { PhaseRunner } from './phase-runner.js';
import { capture } from './phases/capture.js';
import { commitSnapshot, finish } from './phases/finish.js';
import { isolateAndShutdown } from './phases/isolate-and-shutdown.js';
import { DEFAULT_TIMEOUTS, type JobContext, type SnapshotJobOptions } from './phases/job-context.js';
import { materialise } from './phases/materialise.js';
import { preflight } from './phases/preflight.js';
import { prepare } from './phases/prepare.js';

export { newJobId } from './job-id.js';
/** @deprecated import it from src/snapshot/snapshot-id.ts (kept so existing callers work). */
export { defaultSnapshotId } from '../snapshot/snapshot-id.js';
export { DEFAULT_TIMEOUTS, type SnapshotJobOptions, type SnapshotJobTimeouts } from './phases/job-context.js';

/**
 * A fully consistent snapshot of a running VM, as a short list of named steps (src/jobs/phases/,
 * one file each, sharing a JobContext):
 *
 *   preflight    refuse before changing anything (lock, journal, QMP, inventory, strategy)
 *   prepare      disk-snapshot files, the child QEMU waiting with -incoming, migration settings
 *   capture      halt -> disk-snapshot (one QMP transaction for all disks) -> capture, the parent
 *                resumes (precopy: capture -> halt -> disk-snapshot -> switchover)
 *   isolate, shutdown   links down, chardevs checked; the child guest powers off; the child is gone
 *   materialise  one self-contained image per disk in a partial snapshot directory
 *   finish       every disk snapshot drops its view; meta.json; the snapshot is listed
 *   cleanup      the undo stack, bounded, whether the job succeeded or not
 *
 * Undo is registered as each step succeeds; on any failure, timeout or cancellation it unwinds in
 * reverse: the parent resumed first (only if forksnap paused it), the disk snapshots undone, the
 * child stopped, migration settings restored, temporary files removed. If a clean-up step fails
 * the journal is kept, so whoever comes next (supervisor, next job, daemon) retries it.
 */
export async function runSnapshotJob(options: SnapshotJobOptions): Promise<SnapshotMeta> {
  const job = options.jobId ?? newJobId();
  const log = options.log.child({ vm: options.vm, job });
  const events = options.events ?? new JobEventStream(job);
  // The job's own abort (breakJob), raced with the caller's cancel in one signal for the phases.
  const broken = new AbortController();
  const jobSignal = AbortSignal.any([options.signal, broken.signal]);
  const context: JobContext = {
    job,
    vm: options.vm,
    options,
    timeouts: { ...DEFAULT_TIMEOUTS, ...options.timeouts },
    paths: options.paths,
    log,
    events,
    phases: new PhaseRunner(events, log, jobSignal, { vm: options.vm, job }),
    undo: new UndoStack(log),
    startedAt: Date.now(),
    breakJob: (error) => {
      if (jobSignal.aborted) return;
      log.error({ code: error.code, err: error.message }, 'breaking the job');
      broken.abort(error);
    },
    journal: undefined,
    outcome: {},
  };
  let failure: unknown;
  let meta: SnapshotMeta | undefined;
  try {
    const pre = await preflight(context);
    const prepared = await prepare(context, pre);
    events.emit({ type: 'job-started', vm: options.vm, strategy: pre.strategy.name, diskBackends: Object.fromEntries(prepared.snapshots.map((s) => [s.disk.id, s.backend])) });
    const captured = await capture(context, pre, prepared);
    await isolateAndShutdown(context, prepared, captured);
    const materialised = await materialise(context, pre, prepared);
    await finish(context, prepared);
    meta = await commitSnapshot(context, pre, captured, materialised);
    return meta;
  } catch (error) {
    failure = error;
    throw error;
  } finally {
    const failedPhase = failure === undefined ? undefined : context.phases.current;
    const cleanupFailures = await cleanUp(context, failure !== undefined);
    // The dead-man's switch: "done" if the journal is gone, else it unwinds what is left, now.
    await (cleanupFailures.length === 0 ? context.supervisor?.done() : context.supervisor?.handOver())?.catch((error: unknown) => log.error({ err: errorMessage(error) }, 'could not reach the job\'s supervisor'));
    const result = resultFields(context, cleanupFailures);
    if (meta) events.emit({ type: 'job-done', snapshotId: meta.id, consistency: meta.consistency, downtimeMs: meta.parentDowntimeMs, ...result });
    else events.emit({ type: 'job-failed', code: isForksnapError(failure) ? failure.code : 'INTERNAL', message: errorMessage(failure), phase: failedPhase, ...result });
  }
}

/** The cleanup phase: unwind (bounded, not cancellable: it runs after a cancel), then the journal. */
async function cleanUp(context: JobContext, failed: boolean): Promise<string[]> {
  const { log, undo, phases, timeouts } = context;
  let failures: string[];
  try {
    failures = await phases.run('cleanup', timeouts.cleanupMs, ({ signal }) => undo.unwind({ failed, signal }), { cancellable: false });
  } catch (error) {
    log.error({ err: errorMessage(error) }, 'cleanup failed');
    failures = ['cleanup'];
  }
  if (failures.length > 0) {
    log.error({ failedUndos: failures, jobFailed: failed }, 'some clean-up steps failed; the journal is kept so the next job on this VM (or the daemon) retries them');
    return failures;
  }
  try {
    await context.journal?.remove();
  } catch (error) {
    log.error({ err: errorMessage(error) }, 'could not remove the job journal after a clean unwind');
    return ['remove the job journal'];
  }
  return [];
}

/** What job-done and job-failed both carry: one shape, filled as far as the job got. */
function resultFields(context: JobContext, cleanupFailures: string[]): JobResultFields {
  const { outcome } = context;
  return {
    durationMs: Date.now() - context.startedAt,
    phasesMs: { ...context.phases.durations } as Record<string, number>,
    ...(outcome.downtimeMs !== undefined ? { downtimeMs: outcome.downtimeMs } : {}),
    ...(outcome.strategy ? { strategy: outcome.strategy } : {}),
    ...(outcome.strategyFallback ? { strategyFallback: outcome.strategyFallback } : {}),
    ...(outcome.consistency ? { consistency: outcome.consistency } : {}),
    ...(outcome.snapshotId ? { snapshotId: outcome.snapshotId } : {}),
    ...(cleanupFailures.length > 0 ? { cleanupFailures } : {}),
  };
}

