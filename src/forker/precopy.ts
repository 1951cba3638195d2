import { errorMessage } from '../errors.js';
import { roundMs } from '../util/round-ms.js';
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
      // Registered before `migrate`: QEMU's own STOP at pre-switchover and the RESUME after `cont`.
      const runState = parent.listen(['STOP', 'RESUME']);
      try {
        await phases.run('capture', timeouts.captureMs, async ({ signal, progress, log }) => {
          context.willMigrate();
          // The STOP at pre-switchover is forksnap's (it asked for pause-before-switchover). A pause
          // by someone else during the pre-copy would be taken for it too: QMP events carry no origin.
          context.willHalt();
          await parent.execute('migrate', { uri: context.migrationUri }, { signal });
          const force = setTimeout(() => {
            progress({ message: `not converged after ${convergeAfterMs} ms; allowing a longer final pause` });
            parent.execute('migrate-set-parameters', { 'downtime-limit': 60_000 }, { signal }).catch((error: unknown) => {
              log.warn({ err: errorMessage(error) }, 'could not raise downtime-limit for the final pass; waiting for convergence anyway');
            });
          }, convergeAfterMs);
          try {
            await waitForMigrationStatus(parent, context.childProcess, (status) => status === 'pre-switchover', { signal, onProgress: (transfer) => progress(transfer) });
          } finally {
            clearTimeout(force);
          }
        });
        const stop = await phases.run('halt', timeouts.haltMs, ({ signal }) => runState.next((event) => event.event === 'STOP', signal));
        // Ordering: the disks are frozen in pre-switchover, before the final pass is sent: the
        // parent is paused and flushed, and the state the child gets is of this very instant.
        await phases.run('disk-snapshot', timeouts.diskSnapshotMs, ({ signal }) => context.atHalt(signal));
        return await phases.run('switchover', timeouts.captureMs, async ({ signal, progress }) => {
          await parent.execute('migrate-continue', { state: 'pre-switchover' }, { signal });
          await waitForMigrationStatus(parent, context.childProcess, (status) => status === 'completed', { signal, onProgress: (transfer) => progress(transfer) });
          // "completed" is set a moment before QEMU leaves the finish-migrate run state, in which it
          // refuses `cont` ("Migration is not finalized yet").
          await waitUntilMigrationFinalized(parent, signal);
          await parent.execute('cont', undefined, { signal });
          const resume = await runState.next((event) => event.event === 'RESUME', signal);
          const downtimeMs = roundMs(resume.timestampMs - stop.timestampMs);
          context.parentResumed(downtimeMs);
          await waitForIncomingComplete(context.child, context.childProcess, signal);
          return { strategy: 'precopy', haltedAtMs: stop.timestampMs, resumedAtMs: resume.timestampMs, downtimeMs, stateCompleteAtMs: Date.now() };
        });
      } finally {
        runState.close();
      }
    },
  };
}
