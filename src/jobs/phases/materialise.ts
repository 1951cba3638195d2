import path from 'node:path';
import { snapshotFormat } from '../../snapshot/disk-backend.js';
import { beginSnapshot, describeImage, type SnapshotMeta } from '../../snapshot/store.js';
import type { UndoHandle } from '../../util/undo-stack.js';
import { journalOf, type JobContext } from './job-context.js';
import type { Preflight } from './preflight.js';
import type { Prepared } from './prepare.js';

/**
 * Phase 8, materialise: one self-contained image per disk in a partial snapshot directory
 * (journaled before it is created; removed if the job fails), with its checksum. The disk views are
 * still alive here; finish drops them after the images are written.
 */
export interface Materialised {
  readonly disks: SnapshotMeta['disks'];
  readonly imageReadyAt: number;
  readonly commit: (meta: SnapshotMeta) => Promise<void>;
  /** Releases the "remove the partial snapshot" undo once the snapshot is committed. */
  readonly partial: UndoHandle;
}

export async function materialise(context: JobContext, pre: Preflight, prepared: Prepared): Promise<Materialised> {
  const keepCrashImage = context.options.keepCrashImage ?? false;
  const journal = journalOf(context);
  return context.phases.run('materialise', context.timeouts.materialiseMs, async ({ signal, progress }) => {
    const target = await beginSnapshot(context.paths, pre.snapshotId);
    await journal.update(() => ({ partialSnapshotDir: target.dir }));
    const partial = context.undo.push('remove the partial snapshot', target.abort, { when: 'on-failure' });
    const results: SnapshotMeta['disks'] = [];
    const steps = prepared.snapshots.length * (keepCrashImage ? 2 : 1);
    let step = 0;
    const report = (what: string) => (percent: number) => progress({ percent: ((step + percent / 100) / steps) * 100, message: what });
    for (const snapshot of prepared.snapshots) {
      const format = snapshotFormat(snapshot.disk);
      const dest = path.join(target.dir, `${snapshot.disk.id}.${format}`);
      await snapshot.materialise(dest, signal, report(`${snapshot.disk.id}: writing the image`));
      step++;
      const image = await describeImage(dest, format, signal);
      let crashImage: SnapshotMeta['disks'][number]['crashImage'];
      if (keepCrashImage && snapshot.materialiseCrashImage) {
        const crashDest = path.join(target.dir, `${snapshot.disk.id}.crash.${format}`);
        await snapshot.materialiseCrashImage(crashDest, signal, report(`${snapshot.disk.id}: writing the crash-consistent image`));
        step++;
        crashImage = await describeImage(crashDest, format, signal);
      }
      results.push({ id: snapshot.disk.id, source: snapshot.disk.file, sourceFormat: snapshot.disk.format, virtualSize: snapshot.disk.virtualSize, backend: snapshot.backend, image, ...(crashImage ? { crashImage } : {}) });
    }
    progress({ percent: 100 });
    return { disks: results, imageReadyAt: Date.now(), commit: target.commit, partial };
  });
}
