import { round } from '../jobs/phase-runner.js';
import type { CaptureContext, CaptureResult, CaptureStrategy } from './strategy.js';
import { waitForIncomingComplete, waitForMigrationStatus, waitUntilMigrationFinalized } from './wait-for-migration.js';

/**
 * Plain live migration into the child. The parent keeps running while RAM is copied iteratively;
 * with pause-before-switchover QEMU stops the parent for the final pass and waits in
 * `pre-switchover`: that instant is the halt, where the disks are snapshotted. Then the final pass
 * is sent, and forksnap resumes the parent with `cont` (which also re-activates the block devices
 * QEMU inactivated at the end of the migration).
 *
 * A guest that dirties memory faster than it can be copied never converges: after
 * `convergeAfterMs` the allowed downtime is raised so the switchover happens anyway (reported).
 */
export function precopyStrategy(options: { convergeAfterMs?: number } = {}): CaptureStrategy {
  const convergeAfterMs = options.convergeAfterMs ?? 30_000;
  return {
    name: 'precopy',
    capabilities: { 'pause-before-switchover': true },
    async run(context: CaptureContext): Promise<CaptureResult> {
      const { parent, phases, timeouts } = context;
      const migrateStarted = Date.now() - 1;
      await phases.run('capture', timeouts.captureMs, async ({ signal, progress }) => {
        await parent.execute('migrate', { uri: context.migrationUri }, { signal });
        const force = setTimeout(() => {
          progress({ message: `not converged after ${convergeAfterMs} ms; allowing a longer final pause` });
          parent.execute('migrate-set-parameters', { 'downtime-limit': 60_000 }).catch(() => {});
        }, convergeAfterMs);
        try {
          await waitForMigrationStatus(parent, context.childProcess, (status) => status === 'pre-switchover', { signal, onProgress: (transfer) => progress(transfer) });
        } finally {
          clearTimeout(force);
        }
      });
      const stop = await phases.run('halt', timeouts.haltMs, ({ signal }) => parent.waitForEvent((event) => event.event === 'STOP', signal, migrateStarted));
      await phases.run('disk-snapshot', timeouts.diskSnapshotMs, ({ signal }) => context.atHalt(signal));
      return phases.run('switchover', timeouts.captureMs, async ({ signal, progress }) => {
        await parent.execute('migrate-continue', { state: 'pre-switchover' }, { signal });
        await waitForMigrationStatus(parent, context.childProcess, (status) => status === 'completed', { signal, onProgress: (transfer) => progress(transfer) });
        // "completed" is set a moment before QEMU leaves the finish-migrate run state, in which it
        // refuses `cont` ("Migration is not finalized yet").
        await waitUntilMigrationFinalized(parent, signal);
        const resumeSince = Date.now() - 1;
        await parent.execute('cont', undefined, { signal });
        const resume = await parent.waitForEvent((event) => event.event === 'RESUME', signal, resumeSince);
        const downtimeMs = round(resume.timestampMs - stop.timestampMs);
        context.parentResumed(downtimeMs);
        await waitForIncomingComplete(context.child, context.childProcess, signal);
        return { strategy: 'precopy', haltedAtMs: stop.timestampMs, resumedAtMs: resume.timestampMs, downtimeMs, stateCompleteAtMs: Date.now() };
      });
    },
  };
}
