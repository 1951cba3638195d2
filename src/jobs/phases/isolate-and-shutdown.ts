import type { Logger } from 'pino';
import { errorMessage, isForksnapError } from '../../errors.js';
import type { PostcopyTail } from '../../forker/strategy.js';
import { driveShutdown, type ShutdownOutcome } from '../../isolation/drive-shutdown.js';
import { isolateChild } from '../../isolation/isolate-child.js';
import type { QemuChildProcess } from '../../qemu/child-process.js';
import type { QmpClient } from '../../qmp/client.js';
import type { JobCapture } from './capture.js';
import type { JobContext } from './job-context.js';
import type { Prepared } from './prepare.js';

/**
 * Phases 6-7, isolate -> shutdown: the child holds the whole state (fork-postcopy: the device
 * state, its RAM comes on demand) and has not run an instruction. Ordering rules:
 * - isolate BEFORE the child runs (`cont` is in shutdown): links down, chardevs checked;
 * - the child QEMU is gone before materialise reads its images (a guest poweroff makes QEMU exit;
 *   `ChildSlot.stop` makes sure, and fails the job if it will not die);
 * - fork-postcopy: the snapshot process dying during the shutdown stops the child at once (its
 *   vCPUs would wait for pages forever): the snapshot is crash-consistent then; the snapshot
 *   process is ended only after the child is gone.
 */
export async function isolateAndShutdown(context: JobContext, prepared: Prepared, captured: JobCapture): Promise<ShutdownOutcome> {
  const { slot } = prepared;
  const child = slot.qmp!;
  const childProcess = slot.process!;
  await context.phases.run('isolate', context.timeouts.isolateMs, ({ signal }) => isolateChild(child, signal));
  const shutdownMs = context.timeouts.shutdownMs;
  const verdict = await context.phases.run('shutdown', shutdownMs * 2 + 60_000, async ({ signal, log, progress }) => {
    const options = { timeoutMs: shutdownMs, log, onProgress: (message: string) => progress({ message }), onRunning: () => { context.outcome.childRunsAtMs = Date.now(); } };
    const outcome = captured.postcopy
      ? await shutdownWhileServed(child, childProcess, captured.postcopy, { ...options, signal })
      : await driveShutdown(child, childProcess, { ...options, signal });
    const ended = await slot.stop();
    log.info({ terminatedBy: ended?.by }, 'child QEMU gone');
    if (captured.endPostcopy) {
      const stats = await captured.endPostcopy(signal);
      context.outcome.postcopy = { ...stats, backgroundPush: context.options.backgroundPush ?? 'off' };
      log.info(stats, 'snapshot process ended');
      progress({ message: `the child asked for ${stats.requests} pages; ${Math.round(stats.transferredBytes / 1048576)} MiB sent, ${Math.round(stats.unsentBytes / 1048576)} MiB of guest RAM never needed` });
    }
    return outcome;
  });
  context.outcome.consistency = verdict.consistency;
  context.outcome.consistencyReason = verdict.reason;
  context.events.emit({ type: 'verdict', consistency: verdict.consistency, reason: verdict.reason });
  return verdict;
}

/**
 * fork-postcopy: the shutdown, raced against the snapshot process failing. If it fails first the
 * shutdown is abandoned (its signal aborted) and the caller stops the child.
 */
async function shutdownWhileServed(
  child: QmpClient,
  childProcess: QemuChildProcess,
  tail: PostcopyTail,
  options: { timeoutMs: number; signal: AbortSignal; log: Logger; onProgress: (message: string) => void; onRunning: () => void },
): Promise<ShutdownOutcome> {
  const abandon = new AbortController();
  const signal = AbortSignal.any([options.signal, abandon.signal]);
  const shutdown = driveShutdown(child, childProcess, { ...options, signal });
  try {
    return await Promise.race([shutdown, tail.failed]);
  } catch (error) {
    if (options.signal.aborted || !isForksnapError(error, 'CAPTURE_FAILED')) throw error;
    abandon.abort(error);
    await shutdown.catch(() => undefined);
    options.log.error({ err: errorMessage(error) }, 'the snapshot process failed during the child\'s shutdown; stopping the child');
    return { consistency: 'crash-consistent', reason: `the child was stopped mid-shutdown: ${errorMessage(error)}`, presses: 1, guestShutdownMs: undefined };
  }
}
