import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { errorMessage } from '../errors.js';
import { waitForPidExit } from '../qemu/child-process.js';
import { isAlive, isSameProcess, readCmdline, readExe, signalIfSame } from '../qemu/process-info.js';
import type { QmpClient } from '../qmp/client.js';
import { sleep } from '../util/abort.js';
import { ensureParentRunning, type ParentReconnect } from './ensure-parent-running.js';
import { JobJournal, readJournal, readJournals, removeJournal, type JournalEntry } from './journal.js';
import { restoreMigrationSettings } from '../forker/migration-config.js';
import { filesToRemove, mergeOverlayOffline, mergeOverlayOnline, removeUnheld } from './recover-files.js';
import { cancelOurMigration, connectParent, dropDiskAdditions, parentState, releaseOurWriteProtection, writeProtectionMayBeArmed } from './recover-parent.js';

/**
 * Unwind a job whose process died, from its journal, doing only what the journal says forksnap
 * did. Used by the job's supervisor (src/supervisor/), by the next job on the VM and by the daemon
 * at start-up. Order (the parent first: it must run again within 2 s of the death):
 *   1. reach the parent (a dropped QMP connection is not a dead parent: its pid + start time decide)
 *   2. cancel our migration if one is in flight; release 7.2's write-protection if it was a
 *      background snapshot; resume the parent only if the journal says we paused it
 *   3. kill the child QEMU, only if pid AND start time match (then release again: its channel broke)
 *   4. drop what disk backends added (exports, our NBD server, block jobs, nodes)
 *   5. put the user's migration settings back
 *   6. legacy overlays: merge back (online; offline only if nothing holds the images)
 *   7. delete the job's files, only those provably ours and held open by no process
 * Each step is attempted even if an earlier one failed. Progress is written back to the journal,
 * which is removed only when every step succeeded (else whoever comes next retries).
 */
export interface RecoveryResult {
  actions: string[];
  failures: string[];
  /** ms from the start of recovery until the parent was seen running (or found running). */
  parentRunningAfterMs?: number;
}

export interface RecoveryOptions {
  /** How long to keep trying to reach a live parent's QMP socket (default 10 s). */
  connectMs?: number;
}

export async function recoverJob(paths: Paths, entry: JournalEntry, log: Logger, options: RecoveryOptions = {}): Promise<RecoveryResult> {
  const started = Date.now();
  const result: RecoveryResult = { actions: [], failures: [] };
  const journal = new JobJournal(paths, entry);
  const note = (change: Partial<JournalEntry>) =>
    journal.update(() => change).catch((error: unknown) => log.error({ err: errorMessage(error) }, 'could not record recovery progress in the journal'));
  const step = async (what: string, run: () => Promise<string | string[] | undefined>) => {
    try {
      const done = await run();
      if (typeof done === 'string') result.actions.push(done);
      else if (done) result.actions.push(...done);
    } catch (error) {
      result.failures.push(`${what}: ${errorMessage(error)}`);
      log.error({ job: entry.job, step: what, err: errorMessage(error) }, 'recovery step failed');
    }
  };
  const intent = () => ({ pausedByUs: journal.entry.halted, ownsMigration: !!journal.entry.migrationStarted });

  const state = await parentState(paths, entry);
  // Reaching the parent again if the connection drops: its socket, or libvirt for a domain.
  const reconnect: ParentReconnect = async () => {
    const qmp = await connectParent(paths, entry, log, 5_000);
    if (!qmp) throw new Error('the parent QEMU is gone');
    return { qmp, close: () => qmp.close() };
  };
  let parent: QmpClient | undefined;
  try {
    if (state !== 'gone') {
      await step('reach the parent', async () => {
        parent = await connectParent(paths, entry, log, options.connectMs ?? 10_000);
        if (!parent && state === 'unknown') return 'the parent QEMU is gone';
        return undefined;
      });
    }
    if (parent) {
      const qmp = parent;
      await step('cancel our migration', async () => {
        const done = await cancelOurMigration(paths, qmp, journal.entry, log);
        await note({ migrationStarted: false });
        return done;
      });
      await step('resume the parent', async () => {
        const outcome = await ensureParentRunning(qmp, reconnect, log, intent());
        result.parentRunningAfterMs = Date.now() - started;
        await note({ halted: false });
        return outcome === 'resumed' ? 'resumed the parent VM' : outcome === 'left-paused' ? 'left the parent paused: not paused by this job' : undefined;
      });
    } else if (state === 'gone') {
      result.actions.push('the parent QEMU of this job is gone (nothing to do inside it)');
    }

    await step('kill the orphaned child QEMU', () => killChild(entry, log));
    await note({ child: undefined, childPid: undefined });

    if (parent && writeProtectionMayBeArmed(entry)) {
      const qmp = parent;
      await step('release write-protection after the child', async () => {
        await releaseOurWriteProtection(paths, entry, log);
        await ensureParentRunning(qmp, reconnect, log, intent());
        return undefined;
      });
    }

    if (parent && entry.disks?.length) {
      const qmp = parent;
      await step('drop what the disk backends added', async () => {
        const done = await dropDiskAdditions(qmp, entry.disks ?? [], log);
        await note({ disks: (journal.entry.disks ?? []).map((disk) => ({ ...disk, nodes: [], jobs: [], exports: [], nbdServer: false })) });
        return done;
      });
    }

    if (parent && entry.migrationSettings) {
      const qmp = parent;
      const original = entry.migrationSettings;
      await step('restore the migration settings', async () => {
        await restoreMigrationSettings(qmp, original, AbortSignal.timeout(15_000), log);
        await note({ migrationSettings: undefined });
        return 'restored the parent\'s migration capabilities and parameters';
      });
    }

    if (state === 'alive' && !parent) result.failures.push('the parent QEMU is alive but its QMP socket does not answer: nothing was changed inside it (retried later)');

    let overlaysLeft = false;
    for (const overlay of entry.overlays) {
      await step(`merge the overlay of ${overlay.disk}`, async () => {
        if (parent) return mergeOverlayOnline(parent, overlay, entry.job, log);
        if (state !== 'alive') return mergeOverlayOffline(overlay, log);
        throw new Error('the parent runs but does not answer QMP: not merging');
      }).then(() => undefined);
      if (result.failures.some((failure) => failure.startsWith(`merge the overlay of ${overlay.disk}`))) overlaysLeft = true;
    }

    await step('remove temporary files', async () => {
      // An unmerged legacy overlay (maybe in the work dir) holds guest writes: keep every file then.
      if (overlaysLeft) throw new Error('kept every file: a parent overlay is not merged back');
      const { ours, refused } = filesToRemove(paths, entry);
      if (refused.length) log.warn({ refused }, 'journal names files that are not provably this job\'s: left alone');
      const { removed, held } = await removeUnheld(ours, log);
      if (held.length) throw new Error(`held open by another process, left: ${held.map((h) => `${h.file} (pid ${h.pid})`).join(', ')}`);
      return removed.length ? `removed ${removed.length} temporary path(s)` : undefined;
    });
  } finally {
    parent?.close();
  }
  if (result.failures.length === 0) await removeJournal(paths, entry.job);
  log.warn({ job: entry.job, vm: entry.vm, ...result, durationMs: Date.now() - started }, 'recovered an interrupted job');
  return result;
}

/** Kill the child QEMU only if it is still the process the journal names. */
async function killChild(entry: JournalEntry, log: Logger): Promise<string | undefined> {
  if (entry.child) {
    if (!(await signalIfSame(entry.child, 'SIGKILL'))) return undefined;
    if (!(await waitForPidExit(entry.child.pid, 10_000))) throw new Error(`child QEMU ${entry.child.pid} did not exit after SIGKILL`);
    log.warn({ pid: entry.child.pid }, 'killed the orphaned child QEMU');
    return `killed orphaned child QEMU ${entry.child.pid}`;
  }
  // Legacy journals (pid only): the binary must match and the command line must name the work dir.
  if (!entry.childPid || !(await isAlive(entry.childPid))) return undefined;
  const exe = await readExe(entry.childPid).catch(() => '');
  const argv = await readCmdline(entry.childPid).catch(() => []);
  const sameBinary = !!entry.childArgv0 && path.basename(exe) === path.basename(entry.childArgv0);
  if (!sameBinary || !entry.workDir || !argv.some((arg) => arg.includes(entry.workDir!))) return undefined;
  process.kill(entry.childPid, 'SIGKILL');
  await waitForPidExit(entry.childPid, 10_000);
  return `killed orphaned child QEMU ${entry.childPid}`;
}

/** Is the process that wrote this journal still running (then the job is live, not interrupted)? */
export async function ownerAlive(entry: JournalEntry): Promise<boolean> {
  if (entry.owner) return isSameProcess(entry.owner);
  return entry.pid === process.pid || isAlive(entry.pid);
}

/**
 * Recover every journal whose owning process is gone (optionally only for one VM). A journal whose
 * supervisor still runs is left to it: waited for up to `waitForSupervisorMs`, then taken over.
 */
export async function recoverInterruptedJobs(
  paths: Paths,
  log: Logger,
  vm?: string,
  options: RecoveryOptions & { waitForSupervisorMs?: number } = {},
): Promise<{ job: string; vm: string; actions: string[]; failures: string[] }[]> {
  const results = [];
  for (const found of await readJournals(paths)) {
    if (vm && found.vm !== vm) continue;
    // A live owner is a running job (in the daemon: this very process), not an interrupted one.
    if (await ownerAlive(found)) continue;
    let entry: JournalEntry | undefined = found;
    if (entry.supervisor && (await isSameProcess(entry.supervisor))) {
      const supervisor = entry.supervisor;
      // The supervisor retries for up to 45 s (supervise.ts); then its journal is taken over.
      const deadline = Date.now() + (options.waitForSupervisorMs ?? 60_000);
      while (Date.now() < deadline && (await isSameProcess(supervisor))) await sleep(200);
      entry = await readJournal(paths, found.job).catch(() => found);
      if (!entry) {
        results.push({ job: found.job, vm: found.vm, actions: ['unwound by its supervisor'], failures: [] });
        continue;
      }
    }
    results.push({ job: entry.job, vm: entry.vm, ...(await recoverJob(paths, entry, log, options)) });
  }
  return results;
}

/** Journals of a VM that still need unwinding (their owner is gone): `vm start` refuses while there are any. */
export async function pendingJournals(paths: Paths, vm: string): Promise<JournalEntry[]> {
  return (await readJournals(paths)).filter((entry) => entry.vm === vm);
}
