import { ForksnapError } from '../errors.js';
import type { QemuChildProcess } from '../qemu/child-process.js';
import type { QmpClient } from '../qmp/client.js';
import { releaseWriteProtection } from './release-write-protection.js';
import { backgroundSnapshotMayLeaveRamProtected } from '../qemu/qemu-version.js';
import type { EventListener } from '../qmp/event-listener.js';
import type { QmpEvent } from '../qmp/events.js';
import { roundMs } from '../util/round-ms.js';
import { downtimeParts, wallNowMs, type DowntimeMarks } from './downtime-parts.js';
import type { PhaseTools } from './capture-phases.js';
import { ParentPostcopyTail } from './postcopy-tail.js';
import { FORKING_STRATEGIES, type BackgroundPush, type CaptureContext, type CaptureResult, type CaptureStrategy, type StrategyName } from './strategy.js';
import { waitForIncomingComplete, waitForMigrationStatus, waitForPostcopyDestination } from './wait-for-migration.js';
import { resumeAtSnapshotPoint, waitForSnapshotPoint } from './wait-for-snapshot-point.js';

/**
 * fork and background-snapshot: forksnap pauses the parent (QMP `stop` drains and flushes guest
 * I/O), snapshots the disks, then starts the migration. QEMU saves the device state, arms its
 * copy-on-write mechanism (fork(), or userfaultfd write-protection) and then the parent resumes,
 * long before the RAM has been streamed: QEMU 7.2's background-snapshot resumes it by itself
 * (bg_migration_vm_start_bh calls vm_start() unconditionally); QEMUs that keep the run state they
 * found (forksnap's patch series, background-snapshot from 9.0) leave it paused and say when the
 * snapshot point is taken, and forksnap resumes it then (wait-for-snapshot-point.ts).
 */
export function haltThenMigrate(
  name: Extract<StrategyName, 'fork' | 'fork-postcopy' | 'background-snapshot'>,
  capabilities: Record<string, boolean>,
  options: { usesWriteProtection: boolean; postcopy?: { parameters: Record<string, unknown>; childCapabilities: Record<string, boolean> } },
): CaptureStrategy {
  return {
    name,
    capabilities,
    ...(options.postcopy ? { parameters: options.postcopy.parameters, childCapabilities: options.postcopy.childCapabilities } : {}),
    async run(context: CaptureContext): Promise<CaptureResult> {
      const { parent, phases, timeouts } = context;
      // Registered before `stop`: QEMU's RESUME (sent once copy-on-write is armed) can arrive
      // before the reply to `migrate`.
      const runState = parent.listen(['STOP', 'RESUME']);
      try {
        return await haltSnapshotCapture(context, runState);
      } finally {
        runState.close();
      }
    },
  };

  async function haltSnapshotCapture(context: CaptureContext, runState: EventListener): Promise<CaptureResult> {
    const { parent, phases, timeouts } = context;
    const stop = await phases.run('halt', timeouts.haltMs, ({ signal }) => {
      context.willHalt();
      return haltParent(parent, signal, runState);
    });
    // Ordering: the disks are frozen while the parent is halted and BEFORE the migration starts,
    // so the disks and the RAM/device state are of the same instant.
    const marks: DowntimeMarks = { haltAnsweredAt: wallNowMs() };
    await phases.run('disk-snapshot', timeouts.diskSnapshotMs, ({ signal }) => context.atHalt(signal));
    marks.viewsAt = wallNowMs();
    return phases.run('capture', timeouts.captureMs, async ({ signal, progress }) => {
      const attempt = async (strategy: StrategyName, usesWriteProtection: boolean, child: { child: QmpClient; childProcess: QemuChildProcess }) => {
        try {
          return await migrate(context, runState, child, strategy, stop, marks, signal, progress, strategy === name && options.postcopy !== undefined);
        } catch (error) {
          // A broken channel leaves write-protection armed before QEMU 8.1 and the parent hung:
          // release it before anyone tries to talk to the parent again.
          if (usesWriteProtection && backgroundSnapshotMayLeaveRamProtected(context.parent.version)) {
            await releaseWriteProtection(context.parentPid, context.log);
            await context.markWriteTrackingStale();
          }
          throw error;
        }
      };
      try {
        return await attempt(name, options.usesWriteProtection, { child: context.child, childProcess: context.childProcess });
      } catch (error) {
        const reason = forkRefused(error);
        if (!FORKING_STRATEGIES.includes(name) || !reason) throw error;
        const replacement = await context.fallBackToBackgroundSnapshot(reason, signal);
        return attempt('background-snapshot', true, replacement);
      }
    });
  }
}

/** Start the migration, see the parent resume, and wait until the child has the whole state. */
async function migrate(
  context: CaptureContext,
  runState: EventListener,
  { child, childProcess }: { child: QmpClient; childProcess: QemuChildProcess },
  strategy: StrategyName,
  stop: QmpEvent,
  marks: DowntimeMarks,
  signal: AbortSignal,
  progress: PhaseTools['progress'],
  postcopy: boolean,
): Promise<CaptureResult> {
  const { parent } = context;
  context.willMigrate();
  await parent.execute('migrate', { uri: context.migrationUri }, { signal });
  marks.migrateAnsweredAt = wallNowMs();
  // The RESUME comes from QEMU once the copy-on-write is armed; a failure before that leaves the
  // parent paused, which the job's undo handles. The status poll only watches for that failure.
  const racing = new AbortController();
  const watchSignal = AbortSignal.any([signal, racing.signal]);
  let resume: QmpEvent;
  try {
    resume = await Promise.race([
      runState.next((event) => event.event === 'RESUME', watchSignal),
      waitForMigrationStatus(parent, childProcess, () => false, { signal: watchSignal }).then(() => undefined as never),
      // A QEMU that keeps the run state it found (paused, by us) leaves the resume to us: forksnap's
      // patch series, and background-snapshot from QEMU 9.0. The RESUME event then follows our `cont`.
      waitForSnapshotPoint(parent, strategy, watchSignal).then(async () => {
        marks.pointSeenAt = wallNowMs();
        await resumeAtSnapshotPoint(parent, watchSignal, {
          // The ordering round trip is for background-snapshot (a bottom half of QEMU's may still
          // restore the run state); forksnap's fork patches restore it before the point is visible.
          orderingRoundTrip: !FORKING_STRATEGIES.includes(strategy),
          beforeCont: () => {
            marks.contSentAt = wallNowMs();
          },
        });
        return new Promise<never>((_, reject) => watchSignal.addEventListener('abort', () => reject(watchSignal.reason), { once: true }));
      }),
    ]);
  } finally {
    racing.abort(new Error('parent resumed or capture failed'));
  }
  const downtimeMs = roundMs(resume.timestampMs - stop.timestampMs);
  const parts = downtimeParts(stop.timestampMs, resume.timestampMs, marks);
  context.parentResumed(downtimeMs, parts);
  progress({ message: `parent resumed after ${downtimeMs} ms` });
  const captured = { strategy, haltedAtMs: stop.timestampMs, resumedAtMs: resume.timestampMs, downtimeMs, ...(parts ? { downtimeParts: parts } : {}) };
  if (postcopy) {
    // The child runs on the device state; its RAM follows on demand from the snapshot process.
    const tail = new ParentPostcopyTail(parent, childProcess, context.log);
    try {
      await Promise.race([waitForPostcopyDestination(child, childProcess, signal), tail.failed]);
    } catch (error) {
      tail.close();
      throw error;
    }
    progress({ message: 'the child has the device state; its RAM follows on demand' });
    return { ...captured, stateCompleteAtMs: Date.now(), postcopy: tail };
  }
  await waitForMigrationStatus(parent, childProcess, (status) => status === 'completed', { signal, onProgress: (transfer) => progress(transfer) });
  await waitForIncomingComplete(child, childProcess, signal);
  return { ...captured, stateCompleteAtMs: Date.now() };
}

/**
 * The patched QEMU reports a refused fork() as "x-fork-snapshot: fork() failed: <errno text>" and
 * puts the VM back in the run state it had (paused: forksnap halted it). Nothing was streamed yet.
 */
function forkRefused(error: unknown): string | undefined {
  if (!(error instanceof ForksnapError) || error.code !== 'CAPTURE_FAILED') return undefined;
  const detail = String(error.context.errorDesc ?? error.message);
  return /fork\(\) failed/.test(detail) ? detail.replace(/^.*?(x-fork-snapshot: fork\(\) failed[^.;]*).*$/s, '$1') : undefined;
}

/**
 * `stop` and the STOP event that carries QEMU's own timestamp of the halt. Pass a listener opened
 * earlier to keep watching the run state afterwards; else one is scoped to this call. Either way
 * it is registered before `stop` is sent.
 */
export async function haltParent(parent: QmpClient, signal: AbortSignal, listener?: EventListener): Promise<QmpEvent> {
  const stops = listener ?? parent.listen(['STOP']);
  try {
    await parent.execute('stop', undefined, { signal });
    return await stops.next((event) => event.event === 'STOP', signal);
  } finally {
    if (!listener) stops.close();
  }
}

export const backgroundSnapshotStrategy = haltThenMigrate('background-snapshot', { 'background-snapshot': true }, { usesWriteProtection: true });
export const forkStrategy = haltThenMigrate('fork', { 'x-fork-snapshot': true }, { usesWriteProtection: false });

/**
 * fork-postcopy (forksnap's 10.0 patch 0004): the forked snapshot process sends the device state
 * first and then serves the child as a postcopy source; the child (postcopy-ram, userfaultfd) runs
 * its shutdown at once and faults its RAM in. `push` decides what else is sent (strategy.ts).
 */
export function forkPostcopyStrategy(push: BackgroundPush = 'off'): CaptureStrategy {
  return haltThenMigrate('fork-postcopy', { 'x-fork-snapshot': true, 'x-fork-postcopy': true, 'x-fork-postcopy-push': push !== 'off' }, {
    usesWriteProtection: false,
    postcopy: { parameters: { 'max-postcopy-bandwidth': typeof push === 'number' ? push : 0 }, childCapabilities: { 'postcopy-ram': true } },
  });
}
