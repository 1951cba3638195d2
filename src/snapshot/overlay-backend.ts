import { rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { ForksnapError } from '../errors.js';
import type { QmpClient } from '../qmp/client.js';
import { blockJobInfoList } from '../qmp/schemas.js';
import type { ParentDisk } from '../vm/inspect.js';
import type { DiskBackend, DiskBackendContext, DiskSnapshot } from './disk-backend.js';
import { snapshotFormat } from './disk-backend.js';
import { generatedName } from './node-names.js';
import { convertImage, createOverlay, qemuImgBinary } from './qemu-img.js';

/**
 * qcow2 external overlay backend, for any filesystem. At the halt the parent moves onto a temporary
 * overlay (blockdev-snapshot-sync, mode=existing: the overlay file is made before the halt), so its
 * image freezes at that instant. The child runs on its own overlay over the same frozen image.
 * Once the snapshot image is materialised, an active block-commit merges the parent's overlay back
 * and pivots the parent onto its original image: it ends on the same files it started on.
 */
export const overlayBackend: DiskBackend = {
  name: 'qcow2-overlay',
  async prepare(disk: ParentDisk, context: DiskBackendContext, signal: AbortSignal): Promise<DiskSnapshot> {
    const format = snapshotFormat(disk);
    const childOverlay = path.join(context.workDir, `${disk.id}.child.qcow2`);
    const parentOverlay = path.join(context.workDir, `${disk.id}.parent-overlay.qcow2`);
    const overlayNode = generatedName('overlay', context.jobId, disk.id);
    try {
      await createOverlay(childOverlay, disk.file, disk.format, signal);
      await createOverlay(parentOverlay, disk.file, disk.format, signal);
    } catch (error) {
      await Promise.all([rm(childOverlay, { force: true }), rm(parentOverlay, { force: true })]);
      throw error;
    }
    let onOverlay = false;
    const mergeBack = async (signal: AbortSignal, onProgress: (percent: number) => void) => {
      if (!onOverlay) return;
      if (context.parent.state === 'ready') {
        await activeCommit(context.parent, overlayNode, disk.nodeName, generatedName('commit', context.jobId, disk.id), signal, onProgress);
      } else {
        // The parent QEMU is gone: merge offline so no write made after the halt is lost.
        context.log.warn({ disk: disk.id, parentOverlay }, 'parent QMP is gone; merging its overlay offline with qemu-img commit');
        const result = await execa(qemuImgBinary(), ['commit', '-q', '-f', 'qcow2', parentOverlay], { reject: false, all: true });
        if (result.exitCode !== 0) {
          throw new ForksnapError('MERGE_FAILED', `offline merge of ${parentOverlay} into ${disk.file} failed: ${result.all}; the overlay is kept, merge it with \`qemu-img commit ${parentOverlay}\``, { disk: disk.id, parentOverlay });
        }
      }
      onOverlay = false;
      await rm(parentOverlay, { force: true });
    };
    return {
      backend: 'qcow2-overlay',
      disk,
      child: { path: childOverlay, format: 'qcow2' },
      tempFiles: [childOverlay],
      journal: { files: [childOverlay] },
      parentOverlay: { node: overlayNode, file: parentOverlay },
      async commitAtHalt(signal) {
        try {
          await context.parent.execute('blockdev-snapshot-sync', { 'node-name': disk.nodeName, 'snapshot-file': parentOverlay, 'snapshot-node-name': overlayNode, format: 'qcow2', mode: 'existing' }, { signal });
        } catch (error) {
          if (signal.aborted) throw signal.reason;
          throw new ForksnapError('DISK_SNAPSHOT_FAILED', `moving the parent's disk ${disk.id} onto an overlay failed: ${(error as Error).message}`, { disk: disk.id, file: disk.file }, { cause: error });
        }
        onOverlay = true;
        return { undo: () => mergeBack(AbortSignal.timeout(600_000), () => {}) };
      },
      async keepCrashImage() {
        // Nothing to do at the halt: the parent's image is frozen until the merge.
      },
      async materialise(dest, signal, onProgress) {
        await convertImage({ file: childOverlay, format: 'qcow2' }, { file: dest, format }, { signal, onProgress });
      },
      async materialiseCrashImage(dest, signal, onProgress) {
        await convertImage({ file: disk.file, format: disk.format }, { file: dest, format }, { signal, onProgress });
      },
      async finish(signal, onProgress) {
        await mergeBack(signal, onProgress);
        await rm(childOverlay, { force: true });
      },
      async discard() {
        await rm(childOverlay, { force: true });
        if (!onOverlay) await rm(parentOverlay, { force: true });
      },
    };
  },
};

/** Active block-commit of the overlay on top of `baseNode`, then pivot back onto the base. */
async function activeCommit(qmp: QmpClient, topDevice: string, baseNode: string, jobId: string, signal: AbortSignal, onProgress: (percent: number) => void): Promise<void> {
  // Registered before block-commit: a small commit is READY before the command returns.
  const jobEvents = qmp.listen((event) => ['BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'].includes(event.event) && event.data.device === jobId);
  try {
    await qmp.execute('block-commit', { 'job-id': jobId, device: topDevice, 'base-node': baseNode, 'auto-dismiss': true }, { signal });
    const poll = setInterval(() => {
      qmp.execute('query-block-jobs', undefined, { schema: blockJobInfoList }).then((jobs) => {
        const job = jobs.find((entry) => entry.device === jobId);
        if (job && job.len > 0) onProgress(Math.min(100, (job.offset / job.len) * 100));
      }, () => {});
    }, 250);
    try {
      const ready = await jobEvents.next(undefined, signal);
      if (ready.event !== 'BLOCK_JOB_READY') throw new Error(`commit job ended before it was ready: ${JSON.stringify(ready.data)}`);
      await qmp.execute('block-job-complete', { device: jobId }, { signal });
      const done = await jobEvents.next((event) => event.event !== 'BLOCK_JOB_READY', signal);
      if (done.event !== 'BLOCK_JOB_COMPLETED' || done.data.error) throw new Error(`commit job failed: ${JSON.stringify(done.data)}`);
      onProgress(100);
    } finally {
      clearInterval(poll);
    }
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    throw new ForksnapError('MERGE_FAILED', `merging the parent's overlay ${topDevice} back into ${baseNode} failed: ${(error as Error).message}`, { overlayNode: topDevice, baseNode }, { cause: error });
  } finally {
    jobEvents.close();
  }
}
