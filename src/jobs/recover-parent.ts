import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { vmDir, type Paths } from '../config.js';
import { errorMessage } from '../errors.js';
import { releaseWriteProtection } from '../forker/release-write-protection.js';
import { isAlive, isSameProcess, readCmdline } from '../qemu/process-info.js';
import { QmpClient } from '../qmp/client.js';
import { blockJobInfoList, migrationInfo } from '../qmp/schemas.js';
import { dropView } from '../snapshot/fleecing-view.js';
import { sleep } from '../util/abort.js';
import { loadVm } from '../vm/registry.js';
import { endpointOf, openVmQmp } from '../vm/vm-qmp.js';
import type { DiskAdditions, JournalEntry } from './journal.js';

/**
 * The parent-side steps of recovery (recover-job.ts): reach the parent QEMU, stop our migration,
 * un-hang a background snapshot whose channel broke, and take out what disk backends added. Every
 * QMP command has a short deadline: a parent that hangs must not make recovery hang.
 */
const MIGRATION_ACTIVE = new Set(['setup', 'active', 'pre-switchover', 'device', 'cancelling', 'wait-unplug', 'postcopy-active', 'postcopy-paused', 'postcopy-recover']);
const QUICK_MS = 3_000;

export type ParentState = 'alive' | 'gone' | 'unknown';

/**
 * Is the journaled parent QEMU the one running now? Journals without its identity (older ones) fall
 * back to the VM record's pid, alive with the same QMP socket on its command line; 'unknown' if
 * there is no record.
 */
export async function parentState(paths: Paths, entry: JournalEntry): Promise<ParentState> {
  if (entry.parent) return (await isSameProcess(entry.parent)) ? 'alive' : 'gone';
  const record = await loadVm(paths, entry.vm).catch(() => undefined);
  if (!record) return 'unknown';
  if (!record.pid || !(await isAlive(record.pid))) return 'gone';
  const argv = await readCmdline(record.pid).catch(() => []);
  return argv.some((arg) => arg.includes(entry.parentSocket)) ? 'alive' : 'gone';
}

/**
 * QEMU before 8.1 leaves guest RAM write-protected when a background snapshot's channel breaks or
 * the migration is cancelled (README "A QEMU 7.2 bug"): the parent hangs, QMP with it.
 */
export function writeProtectionMayBeArmed(entry: JournalEntry): boolean {
  if (entry.strategy !== 'background-snapshot' || !entry.migrationStarted) return false;
  const [major, minor] = (entry.qemuVersion ?? '').split('.').map(Number);
  if (major === undefined || minor === undefined || Number.isNaN(major) || Number.isNaN(minor)) return true;
  return major < 8 || (major === 8 && minor < 1);
}

/**
 * Release the write-protection of our background snapshot, if any range of the parent is still
 * write-protected (smaps flag "uw"), and then mark the VM's write tracking stale. Nothing protected
 * means the capture never armed it (or it was released already, by whoever marked it then).
 */
export async function releaseOurWriteProtection(paths: Paths, entry: JournalEntry, log: Logger): Promise<void> {
  if (!entry.parent || !writeProtectionMayBeArmed(entry)) return;
  if (!(await isSameProcess(entry.parent))) return;
  if ((await writeProtectedRanges(entry.parent.pid)) === 0) return;
  await releaseWriteProtection(entry.parent.pid, log);
  // The stale RAM_UF_WRITEPROTECT flag would corrupt the next precopy/fork stream (see snapshot-job).
  await writeFile(path.join(vmDir(paths, entry.vm), 'write-tracking-stale'), `${new Date().toISOString()} job ${entry.job} (recovered)\n`).catch((error: unknown) => {
    log.error({ err: errorMessage(error) }, 'could not write the write-tracking-stale marker');
  });
}

/** How many mappings of a process are userfaultfd write-protected (VmFlags "uw" in /proc/PID/smaps). */
export async function writeProtectedRanges(pid: number): Promise<number> {
  const smaps = await readFile(`/proc/${pid}/smaps`, 'utf8').catch(() => '');
  return smaps.split('\n').filter((line) => line.startsWith('VmFlags:') && line.split(/\s+/).includes('uw')).length;
}

/**
 * Connect to the parent's QMP socket, retrying for up to `totalMs` (another client may hold a
 * single-client monitor for a moment). A parent whose main loop hangs in the 7.2 bug never sends
 * its greeting: then the write-protection is released and the connection retried.
 */
export async function connectParent(paths: Paths, entry: JournalEntry, log: Logger, totalMs: number): Promise<QmpClient | undefined> {
  const deadline = Date.now() + totalMs;
  let released = false;
  const record = await loadVm(paths, entry.vm).catch(() => undefined);
  for (let attempt = 0; ; attempt++) {
    try {
      if (record?.libvirt) {
        // A libvirt domain: through libvirt's monitor passthrough, the bridge lives as long as the client.
        const connection = await openVmQmp(paths, entry.vm, endpointOf(record), { log, busyTimeoutMs: 2_000 });
        void connection.qmp.closed.then(() => connection.close());
        return connection.qmp;
      }
      return await QmpClient.connect(entry.parentSocket, { log, timeoutMs: 2_000 });
    } catch (error) {
      log.warn({ attempt, socket: entry.parentSocket, err: errorMessage(error) }, 'the parent QMP socket does not answer');
      if ((await parentState(paths, entry)) === 'gone') return undefined;
      if (!released && writeProtectionMayBeArmed(entry)) {
        released = true;
        await releaseOurWriteProtection(paths, entry, log);
        continue;
      }
      if (Date.now() > deadline) throw error;
      await sleep(500);
    }
  }
}

const ask = <T>(qmp: QmpClient, command: string, args?: Record<string, unknown>, schema?: z.ZodType<T>, ms = QUICK_MS) =>
  qmp.execute(command, args, { schema, signal: AbortSignal.timeout(ms) });

/**
 * Cancel this job's migration if one is still in flight (the journal says we started it), and
 * release the write-protection a cancelled background snapshot leaves behind. Returns what it did.
 */
export async function cancelOurMigration(paths: Paths, qmp: QmpClient, entry: JournalEntry, log: Logger): Promise<string | undefined> {
  if (!entry.migrationStarted) return undefined;
  const wp = writeProtectionMayBeArmed(entry);
  let info = await ask(qmp, 'query-migrate', undefined, migrationInfo).catch((error: unknown) => {
    log.warn({ err: errorMessage(error) }, 'query-migrate did not answer');
    return undefined;
  });
  if (!info && wp) {
    await releaseOurWriteProtection(paths, entry, log);
    info = await ask(qmp, 'query-migrate', undefined, migrationInfo);
  }
  if (!info?.status || !MIGRATION_ACTIVE.has(info.status)) return undefined;
  log.warn({ status: info.status }, 'cancelling the migration this job started');
  await ask(qmp, 'migrate_cancel').catch((error: unknown) => log.warn({ err: errorMessage(error) }, 'migrate_cancel failed'));
  for (let i = 0; i < 50; i++) {
    // 7.2's cancelled background snapshot leaves RAM protected and the parent hung: release it.
    if (wp) await releaseOurWriteProtection(paths, entry, log);
    const now = await ask(qmp, 'query-migrate', undefined, migrationInfo, 1_000).catch(() => undefined);
    if (now?.status && !MIGRATION_ACTIVE.has(now.status)) return `cancelled the job's migration (was ${info.status})`;
    await sleep(100);
  }
  throw new Error(`the migration is still ${info.status} after migrate_cancel`);
}

const jobList = z.array(z.object({ id: z.string(), status: z.string() }).loose());

/**
 * Take out what disk backends added to the parent, only what the journal names: block jobs first
 * (cancelled: that also removes a filter a backup job inserted), then the disk view itself through
 * the fleecing backend's own dropView (exports cut off, devices re-pointed at their own nodes while
 * their root is the filter, nodes deleted in the journal's order, the NBD server stopped if this
 * job started it and no export is left). Files are not deleted here: recovery deletes them only
 * if nothing holds them open (recover-files.ts).
 */
export async function dropDiskAdditions(qmp: QmpClient, disks: readonly DiskAdditions[], log: Logger): Promise<string[]> {
  const done: string[] = [];
  const jobs = new Set(disks.flatMap((disk) => disk.jobs ?? []));
  if (jobs.size) {
    for (const job of (await ask(qmp, 'query-block-jobs', undefined, blockJobInfoList)).filter((j) => jobs.has(j.device))) {
      await ask(qmp, 'block-job-cancel', { device: job.device, force: true }).catch((error: unknown) => log.warn({ job: job.device, err: errorMessage(error) }, 'block-job-cancel failed'));
      done.push(`cancelled block job ${job.device}`);
    }
    await until(async () => {
      const left = (await ask(qmp, 'query-jobs', undefined, jobList)).filter((j) => jobs.has(j.id));
      for (const job of left.filter((j) => j.status === 'concluded')) await ask(qmp, 'job-dismiss', { id: job.id });
      return left.length === 0;
    }, 15_000, 'our block jobs to end');
  }
  for (const disk of disks) {
    if (!(disk.nodes?.length || disk.exports?.length || disk.devices?.length || disk.nbdServer)) continue;
    await dropView(qmp, { ...disk, files: [] }, log, AbortSignal.timeout(30_000));
    done.push(`dropped the disk view of ${disk.disk} (${[disk.exports?.length && 'exports', disk.devices?.length && 'filter', disk.nodes?.length && 'nodes'].filter(Boolean).join(', ')})`);
  }
  return done;
}

async function until(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}
