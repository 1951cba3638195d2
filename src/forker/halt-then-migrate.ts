import { ForksnapError } from '../errors.js';
import type { QemuChildProcess } from '../qemu/child-process.js';
import type { QmpClient } from '../qmp/client.js';
import { releaseWriteProtection } from './release-write-protection.js';
import type { QmpEvent } from '../qmp/events.js';
import { round, type PhaseTools } from '../jobs/phase-runner.js';
import type { CaptureContext, CaptureResult, CaptureStrategy, StrategyName } from './strategy.js';
import { waitForIncomingComplete, waitForMigrationStatus } from './wait-for-migration.js';

/**
 * fork and background-snapshot: forksnap pauses the parent (QMP `stop` drains and flushes guest
 * I/O), snapshots the disks, then starts the migration. QEMU saves the device state, arms its
 * copy-on-write mechanism (fork(), or userfaultfd write-protection) and resumes the parent by
 * itself at once (bg_migration_vm_start_bh in 7.2 calls vm_start() unconditionally; the fork patch
 * does the same), long before the RAM has been streamed.
 */
export function haltThenMigrate(name: Extract<StrategyName, 'fork' | 'background-snapshot'>, capability: string, options: { usesWriteProtection: boolean }): CaptureStrategy {
  return {
    name,
    capabilities: { [capability]: true },
    async run(context: CaptureContext): Promise<CaptureResult> {
      const { parent, phases, timeouts } = context;
      const stop = await phases.run('halt', timeouts.haltMs, ({ signal }) => haltParent(parent, signal));
      await phases.run('disk-snapshot', timeouts.diskSnapshotMs, ({ signal }) => context.atHalt(signal));
      return phases.run('capture', timeouts.captureMs, async ({ signal, progress }) => {
        const attempt = async (strategy: StrategyName, usesWriteProtection: boolean, child: { child: QmpClient; childProcess: QemuChildProcess }) => {
          try {
            return await migrate(context, child, strategy, stop, signal, progress);
          } catch (error) {
            // A broken channel leaves 7.2's write-protection armed and the parent hung: release it
            // before anyone tries to talk to the parent again.
            if (usesWriteProtection) {
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
          if (name !== 'fork' || !reason) throw error;
          const replacement = await context.fallBackToBackgroundSnapshot(reason, signal);
          return attempt('background-snapshot', true, replacement);
        }
      });
    },
  };
}

/** Start the migration, see the parent resume, and wait until the child has the whole state. */
async function migrate(
  context: CaptureContext,
  { child, childProcess }: { child: QmpClient; childProcess: QemuChildProcess },
  strategy: StrategyName,
  stop: QmpEvent,
  signal: AbortSignal,
  progress: PhaseTools['progress'],
): Promise<CaptureResult> {
  const { parent } = context;
  await parent.execute('migrate', { uri: context.migrationUri }, { signal });
  // The RESUME comes from QEMU once the copy-on-write is armed; a failure before that leaves the
  // parent paused, which the job's undo handles.
  const resume = await Promise.race([
    parent.waitForEvent((event) => event.event === 'RESUME', signal, stop.timestampMs),
    waitForMigrationStatus(parent, childProcess, () => false, { signal }).then(() => undefined as never),
  ]);
  const downtimeMs = round(resume.timestampMs - stop.timestampMs);
  context.parentResumed(downtimeMs);
  progress({ message: `parent resumed after ${downtimeMs} ms` });
  await waitForMigrationStatus(parent, childProcess, (status) => status === 'completed', { signal, onProgress: (transfer) => progress(transfer) });
  await waitForIncomingComplete(child, childProcess, signal);
  return { strategy, haltedAtMs: stop.timestampMs, resumedAtMs: resume.timestampMs, downtimeMs, stateCompleteAtMs: Date.now() };
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

/** `stop` and the STOP event that carries QEMU's own timestamp of the halt. */
export async function haltParent(parent: QmpClient, signal: AbortSignal): Promise<QmpEvent> {
  // QEMU stamps events with the host's real-time clock, the same clock as Date.now().
  const since = Date.now() - 1;
  await parent.execute('stop', undefined, { signal });
  return parent.waitForEvent((event) => event.event === 'STOP', signal, since);
}

export const backgroundSnapshotStrategy = haltThenMigrate('background-snapshot', 'background-snapshot', { usesWriteProtection: true });
export const forkStrategy = haltThenMigrate('fork', 'x-fork-snapshot', { usesWriteProtection: false });
