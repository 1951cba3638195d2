import path from 'node:path';
import type { SnapshotMeta } from '../snapshot/store.js';

/**
 * The environment a hook command sees (documented in docs/daemon.md; part of the contract):
 *
 *   both stages   FORKSNAP_HOOK (pre|post), FORKSNAP_VM, FORKSNAP_JOB_ID, FORKSNAP_SNAPSHOT_ID,
 *                 FORKSNAP_TRIGGER (api|cli|schedule), FORKSNAP_SCHEDULE (scheduled jobs),
 *                 FORKSNAP_STATE_DIR
 *   post          FORKSNAP_STATUS (succeeded|failed)
 *     succeeded   FORKSNAP_SNAPSHOT_DIR, FORKSNAP_META (meta.json), FORKSNAP_IMAGES (image paths,
 *                 ":"-separated), FORKSNAP_IMAGE_<DISK> (one per disk, id upper-cased, other
 *                 characters as "_"), FORKSNAP_CONSISTENCY (clean|crash-consistent),
 *                 FORKSNAP_CONSISTENCY_REASON, FORKSNAP_DOWNTIME_MS, FORKSNAP_STRATEGY
 *     failed      FORKSNAP_ERROR_CODE, FORKSNAP_ERROR_MESSAGE
 */
export interface HookContext {
  readonly stage: 'pre' | 'post';
  readonly vm: string;
  readonly job: string;
  readonly snapshotId: string;
  readonly trigger: string;
  readonly schedule?: string | undefined;
  readonly stateDir: string;
  readonly snapshot?: (SnapshotMeta & { dir: string }) | undefined;
  readonly error?: { code: string; message: string } | undefined;
}

export function hookEnvironment(context: HookContext): Record<string, string> {
  const env: Record<string, string> = {
    FORKSNAP_HOOK: context.stage,
    FORKSNAP_VM: context.vm,
    FORKSNAP_JOB_ID: context.job,
    FORKSNAP_SNAPSHOT_ID: context.snapshotId,
    FORKSNAP_TRIGGER: context.trigger,
    FORKSNAP_STATE_DIR: context.stateDir,
  };
  if (context.schedule) env.FORKSNAP_SCHEDULE = context.schedule;
  if (context.stage === 'pre') return env;
  env.FORKSNAP_STATUS = context.error ? 'failed' : 'succeeded';
  if (context.error) {
    env.FORKSNAP_ERROR_CODE = context.error.code;
    env.FORKSNAP_ERROR_MESSAGE = context.error.message;
  }
  const meta = context.snapshot;
  if (meta) {
    const images = meta.disks.map((disk) => path.join(meta.dir, disk.image.file));
    env.FORKSNAP_SNAPSHOT_DIR = meta.dir;
    env.FORKSNAP_META = path.join(meta.dir, 'meta.json');
    env.FORKSNAP_IMAGES = images.join(':');
    meta.disks.forEach((disk, index) => {
      env[`FORKSNAP_IMAGE_${disk.id.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`] = images[index]!;
    });
    env.FORKSNAP_CONSISTENCY = meta.consistency;
    env.FORKSNAP_CONSISTENCY_REASON = meta.consistencyReason;
    env.FORKSNAP_DOWNTIME_MS = String(meta.parentDowntimeMs);
    env.FORKSNAP_STRATEGY = meta.strategy;
  }
  return env;
}
