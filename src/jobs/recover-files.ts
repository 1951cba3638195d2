import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { snapshotsDir, workRoot, type Paths } from '../config.js';
import { processesHoldingOpen } from '../qemu/process-info.js';
import type { QmpClient } from '../qmp/client.js';
import { blockInfoList, blockJobInfoList } from '../qmp/schemas.js';
import { generatedName } from '../snapshot/node-names.js';
import { qemuImgBinary } from '../snapshot/qemu-img.js';
import { sleep } from '../util/abort.js';
import type { JournalEntry } from './journal.js';

/**
 * The file-side steps of recovery: delete only what is provably this job's (named in its journal
 * AND inside its work dir, a partial snapshot in the store, or a name carrying the job id) and held
 * open by no process; merge legacy overlays (the qcow2-overlay backend before fleecing) without
 * ever running an offline `qemu-img commit` against an image a live process holds.
 */
export function isProvablyOurs(paths: Paths, entry: JournalEntry, file: string): boolean {
  const resolved = path.resolve(file);
  const inside = (dir: string) => resolved === dir || resolved.startsWith(`${dir}${path.sep}`);
  const work = path.join(workRoot(paths), entry.job);
  if (inside(work)) return true;
  if (entry.partialSnapshotDir && resolved === path.resolve(entry.partialSnapshotDir) && path.dirname(resolved) === snapshotsDir(paths) && path.basename(resolved).startsWith('.partial-')) return true;
  return path.basename(resolved).includes(entry.job);
}

/**
 * Every path recovery may delete, and the ones it refuses (not provably ours). Legacy overlays are
 * not in it: they hold guest writes until merged (the merge deletes them).
 */
export function filesToRemove(paths: Paths, entry: JournalEntry): { ours: string[]; refused: string[] } {
  const listed = [
    ...entry.tempFiles,
    ...(entry.disks ?? []).flatMap((disk) => disk.files),
    ...(entry.partialSnapshotDir ? [entry.partialSnapshotDir] : []),
    ...(entry.workDir ? [entry.workDir] : []),
  ];
  const unique = [...new Set(listed.map((file) => path.resolve(file)))];
  return { ours: unique.filter((file) => isProvablyOurs(paths, entry, file)), refused: unique.filter((file) => !isProvablyOurs(paths, entry, file)) };
}

/** Delete `files` (recursively) except those some process holds open; returns the held ones. */
export async function removeUnheld(files: readonly string[], log: Logger): Promise<{ removed: string[]; held: { pid: number; file: string }[] }> {
  const held = await processesHoldingOpen(files);
  const heldPaths = new Set(held.map((h) => h.file));
  const removed: string[] = [];
  for (const file of files) {
    const prefix = `${file}${path.sep}`;
    if ([...heldPaths].some((h) => h === file || h.startsWith(prefix))) continue;
    const existed = await stat(file).then(() => true, () => false);
    await rm(file, { recursive: true, force: true });
    if (existed) removed.push(file);
  }
  if (held.length) log.warn({ held }, 'left files another process holds open');
  return { removed, held };
}

type Overlay = JournalEntry['overlays'][number];

/**
 * Legacy: merge a parent overlay back online (the parent answers QMP). If the job's own commit
 * (the overlay backend's finish) is still running, it is driven to the end instead of starting a
 * second one. Success is checked on the result: the disk is back on its base node. Polls instead of
 * waiting for events.
 */
export async function mergeOverlayOnline(qmp: QmpClient, overlay: Overlay, job: string, log: Logger): Promise<string | undefined> {
  const quick = () => ({ signal: AbortSignal.timeout(5_000) });
  const onOverlay = async () => (await qmp.execute('query-block', undefined, { schema: blockInfoList, ...quick() })).some((block) => block.inserted?.['node-name'] === overlay.overlayNode);
  const jobs = await qmp.execute('query-block-jobs', undefined, { schema: blockJobInfoList, ...quick() });
  const ownCommit = generatedName('commit', job, overlay.disk);
  let jobId = jobs.some((j) => j.device === ownCommit) ? ownCommit : undefined;
  if (!jobId) {
    if (!(await onOverlay())) return undefined;
    jobId = generatedName('recover', job, overlay.disk);
    await qmp.execute('block-commit', { 'job-id': jobId, device: overlay.overlayNode, 'base-node': overlay.baseNode, 'auto-dismiss': true }, quick());
  }
  const deadline = Date.now() + 30 * 60_000;
  let completed = false;
  for (;;) {
    const found = (await qmp.execute('query-block-jobs', undefined, { schema: blockJobInfoList, ...quick() })).find((j) => j.device === jobId);
    if (!found) break;
    if (Date.now() > deadline) throw new Error(`the commit job ${jobId} did not finish within 30 min`);
    if (found.ready && !completed) {
      await qmp.execute('block-job-complete', { device: jobId }, quick());
      completed = true;
    }
    await sleep(100);
  }
  if (await onOverlay()) throw new Error(`the commit job ${jobId} ended, but the disk is still on its overlay`);
  await rm(overlay.overlayFile, { force: true });
  log.warn({ disk: overlay.disk, jobId }, 'merged a legacy parent overlay back');
  return `merged the parent overlay of ${overlay.disk} back into ${overlay.baseFile}`;
}

/**
 * Legacy, the parent QEMU is gone: commit the overlay offline, but only if no process holds the
 * overlay or its base open (the VM may have been started again, on its base) and the base has not
 * been written since the overlay last was (a stale overlay over a changed base would lose data).
 */
export async function mergeOverlayOffline(overlay: Overlay, log: Logger): Promise<string | undefined> {
  const overlayStat = await stat(overlay.overlayFile).catch(() => undefined);
  if (!overlayStat) return undefined; // never created, or merged already
  const held = await processesHoldingOpen([overlay.overlayFile, overlay.baseFile]);
  if (held.length) throw new Error(`not merging ${overlay.overlayFile} offline: held open by pid ${held.map((h) => h.pid).join(', ')}`);
  const baseStat = await stat(overlay.baseFile);
  if (baseStat.mtimeMs > overlayStat.mtimeMs) throw new Error(`not merging ${overlay.overlayFile} offline: its base ${overlay.baseFile} was written after it (the VM ran on its base since); left for a manual decision`);
  const result = await execa(qemuImgBinary(), ['commit', '-q', '-f', 'qcow2', overlay.overlayFile], { reject: false, all: true });
  if (result.exitCode !== 0) throw new Error(result.all || `qemu-img commit exit ${result.exitCode}`);
  await rm(overlay.overlayFile, { force: true });
  log.warn({ disk: overlay.disk }, 'merged a legacy parent overlay offline');
  return `merged the parent overlay of ${overlay.disk} offline into ${overlay.baseFile}`;
}
