import { rm } from 'node:fs/promises';
import path from 'node:path';
import { errorMessage } from '../../errors.js';
import { snapshotFormat, type DiskSnapshot } from '../../snapshot/disk-backend.js';
import { acquireChainLock, incrementalBase } from '../../snapshot/incremental.js';
import { beginSnapshot, describeImage, type DiskImage, type SnapshotMeta } from '../../snapshot/store.js';
import type { UndoHandle } from '../../util/undo-stack.js';
import { journalOf, type JobContext } from './job-context.js';
import type { Preflight } from './preflight.js';
import type { Prepared } from './prepare.js';

/**
 * Phase 8, materialise: one image per disk in a partial snapshot directory (journaled before it is
 * created; removed if the job fails), with its checksum. The disk views are still alive here;
 * finish drops them after the images are written.
 *
 * Incremental storage (the default): a disk whose backend can write an increment
 * (materialiseOnto: fleecing) is written as a qcow2 over the same disk's image in the VM's latest
 * snapshot, holding only what differs from it, so a nightly snapshot of a big disk writes about
 * what changed, never the whole disk. From then until the snapshot is listed the VM's chain lock is
 * held, so that base cannot be deleted under it. Otherwise the image is full, with the reason in
 * meta.json (no earlier snapshot, --full, the disk's size changed, the increment failed); reflink
 * images are made increments after the commit (run-job.ts).
 */
export interface Materialised {
  readonly disks: SnapshotMeta['disks'];
  readonly imageReadyAt: number;
  /** Writes meta.json, lists the snapshot and lets go of the chain lock. */
  readonly commit: (meta: SnapshotMeta) => Promise<void>;
  /** Releases the "remove the partial snapshot" undo once the snapshot is committed. */
  readonly partial: UndoHandle;
}

type Progress = (percent: number) => void;

export async function materialise(context: JobContext, pre: Preflight, prepared: Prepared): Promise<Materialised> {
  const keepCrashImage = context.options.keepCrashImage ?? false;
  const journal = journalOf(context);
  return context.phases.run('materialise', context.timeouts.materialiseMs, async ({ signal, progress }) => {
    const target = await beginSnapshot(context.paths, pre.snapshotId);
    await journal.update(() => ({ partialSnapshotDir: target.dir }));
    const partial = context.undo.push('remove the partial snapshot', target.abort, { when: 'on-failure' });
    const releaseChain = await holdChainLock(context, prepared, signal);
    const results: SnapshotMeta['disks'] = [];
    const steps = prepared.snapshots.length * (keepCrashImage ? 2 : 1);
    let step = 0;
    const report = (what: string): Progress => (percent) => progress({ percent: ((step + percent / 100) / steps) * 100, message: what });
    for (const snapshot of prepared.snapshots) {
      const { image, fullReason } = await writeImage(context, snapshot, target.dir, signal, report);
      step++;
      let crashImage: SnapshotMeta['disks'][number]['crashImage'];
      if (keepCrashImage && snapshot.materialiseCrashImage) {
        const format = snapshotFormat(snapshot.disk);
        const crashDest = path.join(target.dir, `${snapshot.disk.id}.crash.${format}`);
        await snapshot.materialiseCrashImage(crashDest, signal, report(`${snapshot.disk.id}: writing the crash-consistent image`));
        step++;
        crashImage = await describeImage(crashDest, format, signal);
      }
      results.push({ id: snapshot.disk.id, source: snapshot.disk.file, sourceFormat: snapshot.disk.format, virtualSize: snapshot.disk.virtualSize, backend: snapshot.backend, image, ...(crashImage ? { crashImage } : {}), ...(fullReason ? { fullReason } : {}) });
    }
    progress({ percent: 100 });
    const commit = async (meta: SnapshotMeta) => {
      await target.commit(meta);
      await releaseChain?.();
    };
    return { disks: results, imageReadyAt: Date.now(), commit, partial };
  });
}

/**
 * With incremental storage and a backend that writes increments, take the VM's chain lock until
 * the snapshot is listed (released by commit, or by the undo stack when the job fails).
 */
async function holdChainLock(context: JobContext, prepared: Prepared, signal: AbortSignal): Promise<(() => Promise<void>) | undefined> {
  if (context.options.storage === 'full' || !prepared.snapshots.some((snapshot) => snapshot.materialiseOnto)) return undefined;
  const release = await acquireChainLock(context.paths, context.vm, `job-${context.job}`, signal);
  let released = false;
  const once = async () => {
    if (released) return;
    released = true;
    await release();
  };
  context.undo.push('release the snapshot chain lock', once, { when: 'always' });
  return once;
}

/** One disk's image: an increment over the VM's latest snapshot where possible, else full (with why). */
async function writeImage(context: JobContext, snapshot: DiskSnapshot, dir: string, signal: AbortSignal, report: (what: string) => Progress): Promise<{ image: DiskImage; fullReason?: string }> {
  const { disk } = snapshot;
  const full = async (fullReason: string | undefined) => {
    const format = snapshotFormat(disk);
    const dest = path.join(dir, `${disk.id}.${format}`);
    await snapshot.materialise(dest, signal, report(`${disk.id}: writing the full image`));
    return { image: await describeImage(dest, format, signal), ...(fullReason ? { fullReason } : {}) };
  };
  if (context.options.storage === 'full') return full('a full snapshot was asked for (--full)');
  if (!snapshot.materialiseOnto) return full(undefined);
  const base = await incrementalBase(context.paths, context.vm, disk, new Date().toISOString());
  if ('fullReason' in base) return full(base.fullReason);
  const dest = path.join(dir, `${disk.id}.qcow2`);
  try {
    await snapshot.materialiseOnto(dest, base.backing, signal, report(`${disk.id}: writing the increment over ${base.backing.snapshot}`));
    return { image: { ...(await describeImage(dest, 'qcow2', signal)), backing: base.backing } };
  } catch (error) {
    if (signal.aborted) throw error;
    context.log.error({ disk: disk.id, base: base.backing.snapshot, err: errorMessage(error) }, 'writing the image as an increment failed; writing it full');
    await rm(dest, { force: true });
    return full(`writing it as an increment over ${base.backing.snapshot} failed: ${errorMessage(error).slice(0, 300)}`);
  }
}
