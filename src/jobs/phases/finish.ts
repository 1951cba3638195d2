import { toForksnapError } from '../../errors.js';
import type { CaptureResult } from '../../forker/strategy.js';
import type { SnapshotMeta } from '../../snapshot/store.js';
import type { JobContext } from './job-context.js';
import type { Materialised } from './materialise.js';
import type { Preflight } from './preflight.js';
import type { Prepared } from './prepare.js';

/**
 * Phase 9, finish: every disk snapshot's `finish()` drops its view (a fleecing backend removes its
 * filter, export and fleecing image; the legacy overlay backend merges the parent's overlay back),
 * then the snapshot is committed: meta.json written and the partial directory renamed into place.
 * Ordering rule: the views are dropped only after materialise wrote every image from them, and the
 * snapshot is listed only once all of it is written.
 */
export async function finish(context: JobContext, prepared: Prepared): Promise<void> {
  await context.phases.run('finish', context.timeouts.finishMs, async ({ signal, progress }) => {
    for (const snapshot of prepared.snapshots) {
      await snapshot.finish(signal, (percent) => progress({ percent, message: `${snapshot.disk.id}: finishing the disk snapshot` }));
    }
  });
}

/** meta.json (every phase's duration so far included) and the rename into the store. */
export async function commitSnapshot(context: JobContext, pre: Preflight, captured: CaptureResult, materialised: Materialised): Promise<SnapshotMeta> {
  const { outcome } = context;
  const version = pre.parent.version;
  const meta: SnapshotMeta = {
    version: 1,
    id: pre.snapshotId,
    vm: context.vm,
    createdAt: new Date(captured.haltedAtMs).toISOString(),
    strategy: captured.strategy,
    ...(outcome.strategyFallback ? { strategyFallback: outcome.strategyFallback } : {}),
    consistency: outcome.consistency!,
    consistencyReason: outcome.consistencyReason!,
    parentDowntimeMs: outcome.downtimeMs ?? Number.NaN,
    ...(outcome.downtimeParts ? { parentDowntimeParts: outcome.downtimeParts } : {}),
    ...(outcome.parentMemory ? { parentMemory: outcome.parentMemory } : {}),
    timeToStateMs: Math.round(captured.stateCompleteAtMs - captured.haltedAtMs),
    ...(outcome.childRunsAtMs !== undefined ? { timeToChildRunMs: Math.round(outcome.childRunsAtMs - captured.haltedAtMs) } : {}),
    ...(outcome.postcopy ? { postcopy: outcome.postcopy } : {}),
    timeToImageMs: Math.round(materialised.imageReadyAt - captured.haltedAtMs),
    phasesMs: context.phases.durations as Record<string, number>,
    disks: materialised.disks,
    labels: context.options.labels ?? {},
    qemu: { binary: pre.inventory.exe, version: version ? `${version.major}.${version.minor}.${version.micro}` : 'unknown' },
    job: context.job,
  };
  try {
    await materialised.commit(meta);
  } catch (error) {
    throw toForksnapError(error, 'FINISH_FAILED', `writing the snapshot ${pre.snapshotId} into the store failed`, { vm: context.vm, job: context.job, phase: 'finish' });
  }
  materialised.partial.release();
  return meta;
}
