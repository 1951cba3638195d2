import { rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { errorMessage } from '../errors.js';
import { waitForPidExit } from '../qemu/child-process.js';
import { isAlive, readExe } from '../qemu/process-info.js';
import { QmpClient } from '../qmp/client.js';
import { blockInfoList } from '../qmp/schemas.js';
import { qemuImgBinary } from '../snapshot/qemu-img.js';
import { ensureParentRunning } from './ensure-parent-running.js';
import { journalDir, readJournals, type JournalEntry } from './journal.js';

/**
 * Unwind a job whose process died, from its journal: kill the orphaned child QEMU, resume the
 * parent if the job had halted it, merge the parent's temporary overlays back (online with an active
 * commit, or offline with qemu-img commit if the parent is gone), delete temporary files and the
 * partial snapshot. Each step is attempted even if an earlier one failed; returns what was done.
 */
export async function recoverJob(paths: Paths, entry: JournalEntry, log: Logger): Promise<{ actions: string[]; failures: string[] }> {
  const actions: string[] = [];
  const failures: string[] = [];
  const step = async (what: string, run: () => Promise<string | undefined>) => {
    try {
      const done = await run();
      if (done) actions.push(done);
    } catch (error) {
      failures.push(`${what}: ${errorMessage(error)}`);
      log.error({ job: entry.job, step: what, err: errorMessage(error) }, 'recovery step failed');
    }
  };
  await step('kill the orphaned child QEMU', async () => {
    if (!entry.childPid || !(await isAlive(entry.childPid))) return undefined;
    const exe = await readExe(entry.childPid).catch(() => '');
    if (entry.childArgv0 && exe && path.basename(exe) !== path.basename(entry.childArgv0)) return undefined; // pid reused
    process.kill(entry.childPid, 'SIGKILL');
    await waitForPidExit(entry.childPid, 10_000);
    return `killed orphaned child QEMU ${entry.childPid}`;
  });
  let parent: QmpClient | undefined;
  await step('connect to the parent', async () => {
    parent = await QmpClient.connect(entry.parentSocket, { log, timeoutMs: 5_000 });
    return undefined;
  });
  try {
    await step('resume the parent', async () => {
      if (!parent) return undefined;
      await ensureParentRunning(parent, entry.parentSocket, log);
      return entry.halted ? 'made sure the parent VM runs' : undefined;
    });
    for (const overlay of entry.overlays) {
      await step(`merge overlay of ${overlay.disk}`, async () => {
        if (parent) {
          const blocks = await parent.execute('query-block', undefined, { schema: blockInfoList });
          const onOverlay = blocks.some((block) => block.inserted?.['node-name'] === overlay.overlayNode);
          if (!onOverlay) {
            await rm(overlay.overlayFile, { force: true });
            return undefined;
          }
          const jobId = `fs-recover-${overlay.disk}`.slice(0, 31);
          // A small commit can be READY (and COMPLETED) before the command returns: look at events since now.
          const since = Date.now() - 1000;
          await parent.execute('block-commit', { 'job-id': jobId, device: overlay.overlayNode, 'base-node': overlay.baseNode, 'auto-dismiss': true });
          const signal = AbortSignal.timeout(30 * 60_000);
          const ready = await parent.waitForEvent((event) => ['BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'].includes(event.event) && event.data.device === jobId, signal, since);
          if (ready.event !== 'BLOCK_JOB_READY') throw new Error(`commit job ended early: ${JSON.stringify(ready.data)}`);
          await parent.execute('block-job-complete', { device: jobId });
          const done = await parent.waitForEvent((event) => ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'].includes(event.event) && event.data.device === jobId, signal, since);
          if (done.event !== 'BLOCK_JOB_COMPLETED' || done.data.error) throw new Error(`commit job failed: ${JSON.stringify(done.data)}`);
          await rm(overlay.overlayFile, { force: true });
          return `merged the parent overlay of ${overlay.disk} back into ${overlay.baseFile}`;
        }
        const result = await execa(qemuImgBinary(), ['commit', '-q', '-f', 'qcow2', overlay.overlayFile], { reject: false, all: true });
        if (result.exitCode !== 0) {
          // The overlay may never have been used (halt not reached): then there is nothing to merge.
          if (/No such file/.test(result.all ?? '')) return undefined;
          throw new Error(result.all ?? `qemu-img commit exit ${result.exitCode}`);
        }
        await rm(overlay.overlayFile, { force: true });
        return `merged the parent overlay of ${overlay.disk} offline into ${overlay.baseFile}`;
      });
    }
  } finally {
    parent?.close();
  }
  await step('remove temporary files', async () => {
    const files = [...entry.tempFiles, ...(entry.partialSnapshotDir ? [entry.partialSnapshotDir] : []), ...(entry.workDir ? [entry.workDir] : [])];
    await Promise.all(files.map((file) => rm(file, { recursive: true, force: true })));
    return files.length ? `removed ${files.length} temporary path(s)` : undefined;
  });
  if (failures.length === 0) await rm(path.join(journalDir(paths), `${entry.job}.json`), { force: true });
  log.warn({ job: entry.job, vm: entry.vm, actions, failures }, 'recovered an interrupted job');
  return { actions, failures };
}

/** Recover every journal whose owning process is gone (optionally only for one VM). */
export async function recoverInterruptedJobs(paths: Paths, log: Logger, vm?: string): Promise<{ job: string; vm: string; actions: string[]; failures: string[] }[]> {
  const results = [];
  for (const entry of await readJournals(paths)) {
    if (vm && entry.vm !== vm) continue;
    if (entry.pid !== process.pid && (await isAlive(entry.pid))) continue;
    if (entry.pid === process.pid) continue;
    results.push({ job: entry.job, vm: entry.vm, ...(await recoverJob(paths, entry, log)) });
  }
  return results;
}
