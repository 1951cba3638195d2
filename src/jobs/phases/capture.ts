import { rm, writeFile } from 'node:fs/promises';
import { errorMessage } from '../../errors.js';
import { backgroundSnapshotStrategy } from '../../forker/halt-then-migrate.js';
import type { CaptureResult, PostcopyStats } from '../../forker/strategy.js';
import { ensureParentRunning, type ParentOutcome } from '../ensure-parent-running.js';
import { ParentRunWatch } from '../parent-run-watch.js';
import { memoryStatus } from '../../qemu/process-info.js';
import { snapshotDisksAtHalt, type HaltUndo } from './disk-snapshot.js';
import { journalOf, type JobContext } from './job-context.js';
import type { Preflight } from './preflight.js';
import type { Prepared } from './prepare.js';

/**
 * Phases 3-5, halt -> disk-snapshot -> capture (or precopy's capture -> halt -> disk-snapshot ->
 * switchover): the strategy decides when the parent halts and resumes; this orchestrates what the
 * job contributes: the disk-snapshot step at the halt, the fallback from a refused fork() to
 * background-snapshot, and the undo that resumes the parent. Ordering rules:
 * - the halt is journaled BEFORE it happens, not at it (every ms at the halt is parent downtime);
 * - "undo the disk snapshots taken at the halt" is registered before "resume the parent", so on
 *   unwinding the parent resumes first, then the snapshots are undone (the child, which holds the
 *   frozen images open, is stopped before that). One registration each, no re-push;
 * - the user's migration settings are put back as soon as the capture is over.
 */
/** The capture as the job holds it: fork-postcopy adds how to end the snapshot process after the shutdown. */
export interface JobCapture extends CaptureResult {
  /** fork-postcopy: once the child is gone, end the parent's snapshot process, then hand the migration back (settings restored). */
  readonly endPostcopy?: (signal: AbortSignal) => Promise<PostcopyStats>;
}

export async function capture(context: JobContext, pre: Preflight, prepared: Prepared): Promise<JobCapture> {
  const { undo, log, events, options, outcome } = context;
  const journal = journalOf(context);
  const { slot, snapshots, migrationSettings } = prepared;
  const strategy = pre.strategy;

  // Watches STOP/RESUME from here to the end of the unwind: whether a pause is still forksnap's.
  const watch = new ParentRunWatch(pre.parent, log);
  undo.push('stop watching the parent run state', () => watch.close());
  const haltUndos: HaltUndo[] = [];
  // On success the finish step drops the views itself: this undo is for failures only.
  undo.push('undo the disk snapshots taken at the halt', () => undoHaltSnapshots(haltUndos, () => slot.stop()), { when: 'on-failure' });
  const resumeParent = async (): Promise<ParentOutcome> => {
    const result = await ensureParentRunning(pre.parent, pre.reconnectParent, log, watch.intent);
    await journal.update(() => ({ halted: false, migrationStarted: false }));
    return result;
  };
  undo.push('resume the parent', resumeParent, { when: 'on-failure' });

  await journal.update((entry) => ({
    halted: true,
    migrationStarted: true,
    strategy: strategy.name,
    // Legacy qcow2-overlay backend: recovery checks whether the parent really is on the overlay.
    overlays: snapshots.filter((s) => s.parentOverlay).map((s) => ({ disk: s.disk.id, overlayNode: s.parentOverlay!.node, baseNode: s.disk.nodeName, overlayFile: s.parentOverlay!.file, baseFile: s.disk.file })).concat(entry.overlays),
  }));

  // Before the halt (never in the downtime): fork() copies the page tables, so they are worth knowing.
  outcome.parentMemory = { ...(await memoryStatus(pre.inventory.pid)), ...hugePagesOf(prepared) };
  const result = await strategy.run({
    parent: pre.parent,
    child: slot.qmp!,
    childProcess: slot.process!,
    parentPid: pre.inventory.pid,
    migrationUri: prepared.migrationUri,
    phases: context.phases,
    timeouts: { haltMs: context.timeouts.haltMs, diskSnapshotMs: context.timeouts.diskSnapshotMs, captureMs: context.timeouts.captureMs },
    log,
    willHalt: () => watch.willHalt(),
    willMigrate: () => watch.willMigrate(),
    atHalt: (signal) => snapshotDisksAtHalt(pre.parent, snapshots, haltUndos, { keepCrashImage: options.keepCrashImage ?? false, signal }),
    fallBackToBackgroundSnapshot: async (reason, signal) => {
      // fork() was refused before any state left the parent, which is still halted with its disks
      // snapshotted: retry on a fresh child (the old one's incoming migration is spoiled).
      outcome.strategyFallback = { from: strategy.name, reason };
      events.emit({ type: 'strategy-fallback', from: strategy.name, to: 'background-snapshot', reason });
      log.warn({ reason }, 'fork capture failed before the fork; falling back to background-snapshot');
      await journal.update(() => ({ strategy: 'background-snapshot' }));
      await slot.stop();
      await migrationSettings.apply(backgroundSnapshotStrategy.capabilities, signal);
      const started = await slot.start(pre.parent, signal, { verify: false });
      return { child: started.qmp, childProcess: started.process };
    },
    markWriteTrackingStale: () => writeFile(pre.staleMarker, `${new Date().toISOString()} job ${context.job}\n`),
    parentResumed: (ms, parts) => {
      // QEMU resumed the parent: from now on a pause is not ours (recovery must not resume it).
      journal.update(() => ({ halted: false })).catch((error: unknown) => log.error({ err: errorMessage(error) }, 'could not journal the resume'));
      outcome.downtimeMs = ms;
      if (parts) outcome.downtimeParts = parts;
      events.emit({ type: 'parent-resumed', downtimeMs: ms, ...(parts ? { downtimeParts: parts } : {}) });
    },
  });
  outcome.strategy = result.strategy;
  outcome.haltedAtMs = result.haltedAtMs;
  const tail = result.postcopy;
  if (tail) {
    // The parent runs (the strategy saw its RESUME); its snapshot process serves the child's RAM
    // until the shutdown is over, and stays forksnap's migration until then: a failure from here
    // on cancels it (the undo that resumes the parent), which also ends the child's page supply.
    await journal.update(() => ({ halted: false }));
    undo.push('stop watching the snapshot process', () => tail.close());
    const endPostcopy = async (signal: AbortSignal): Promise<PostcopyStats> => {
      const stats = await tail.end(signal);
      await journal.update(() => ({ migrationStarted: false }));
      watch.migrationOver();
      await migrationSettings.restore().catch((error: unknown) => log.warn({ err: errorMessage(error) }, 'the parent\'s migration settings could not be put back yet; the clean-up retries'));
      return stats;
    };
    return { ...result, endPostcopy };
  }
  // The strategy saw the parent resume; make sure (and journal it), then nothing of the migration
  // is ours any more: a later failure must not cancel a migration someone else starts.
  await resumeParent();
  watch.migrationOver();
  if (result.strategy === 'background-snapshot') {
    await rm(pre.staleMarker, { force: true }).catch((error: unknown) => log.warn({ err: errorMessage(error) }, 'could not remove the write-tracking-stale marker'));
  }
  // The snapshot does not depend on this: a refusal is logged and retried by the clean-up (which
  // keeps the journal, and so the originals, if it fails again).
  await migrationSettings.restore().catch((error: unknown) => log.warn({ err: errorMessage(error) }, 'the parent\'s migration settings could not be put back yet; the clean-up retries'));
  return result;
}

/** What the collapse before a fork did to the huge-page coverage of guest RAM, for meta.json. */
function hugePagesOf(prepared: Prepared): { anonHugeBytes?: number; collapse?: { beforeBytes: number; afterBytes: number; ms: number; failedBytes: number } } {
  const report = prepared.hugePages;
  if (!report?.supported || !report.before || !report.after) return {};
  const kib = (value: number | null) => (value ?? 0) * 1024;
  return { anonHugeBytes: kib(report.after.anonHugeKiB), collapse: { beforeBytes: kib(report.before.anonHugeKiB), afterBytes: kib(report.after.anonHugeKiB), ms: report.ms ?? 0, failedBytes: report.failedBytes ?? 0 } };
}

/** Run the halt-time undos in reverse, each attempted; the child goes first (it holds the images). */
async function undoHaltSnapshots(haltUndos: readonly HaltUndo[], stopChild: () => Promise<unknown>): Promise<void> {
  if (haltUndos.length === 0) return;
  await stopChild();
  const failures: string[] = [];
  for (const halted of [...haltUndos].reverse()) {
    try {
      await halted.run();
    } catch (error) {
      failures.push(`${halted.disk}: ${errorMessage(error)}`);
    }
  }
  if (failures.length > 0) throw new Error(`undoing the disk snapshots failed for ${failures.join('; ')}`);
}
