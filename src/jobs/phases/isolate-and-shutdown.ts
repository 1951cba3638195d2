import { driveShutdown, type ShutdownOutcome } from '../../isolation/drive-shutdown.js';
import { isolateChild } from '../../isolation/isolate-child.js';
import type { JobContext } from './job-context.js';
import type { Prepared } from './prepare.js';

/**
 * Phases 6-7, isolate -> shutdown: the child holds the whole state and has not run an instruction.
 * Ordering rules:
 * - isolate BEFORE the child runs (`cont` is in shutdown): links down, chardevs checked;
 * - the child QEMU is gone before materialise reads its images (a guest poweroff makes QEMU exit;
 *   `ChildSlot.stop` makes sure, and fails the job if it will not die).
 */
export async function isolateAndShutdown(context: JobContext, prepared: Prepared): Promise<ShutdownOutcome> {
  const { slot } = prepared;
  const child = slot.qmp!;
  const childProcess = slot.process!;
  await context.phases.run('isolate', context.timeouts.isolateMs, ({ signal }) => isolateChild(child, signal));
  const shutdownMs = context.timeouts.shutdownMs;
  const verdict = await context.phases.run('shutdown', shutdownMs * 2 + 60_000, async ({ signal, log, progress }) => {
    const outcome = await driveShutdown(child, childProcess, { timeoutMs: shutdownMs, signal, log, onProgress: (message) => progress({ message }) });
    const ended = await slot.stop();
    log.info({ terminatedBy: ended?.by }, 'child QEMU gone');
    return outcome;
  });
  context.outcome.consistency = verdict.consistency;
  context.outcome.consistencyReason = verdict.reason;
  context.events.emit({ type: 'verdict', consistency: verdict.consistency, reason: verdict.reason });
  return verdict;
}
