import { snapshotDir, type Paths } from '../config.js';
import type { JobRecord } from '../jobs/job-record.js';
import { toSnapshotView, type SnapshotView } from '../snapshot/store.js';

/**
 * A job record as the API and the WebSocket "state" messages show it: its snapshot (once it
 * succeeded) is the snapshot view, with absolute image paths computed from where the store is now
 * (a persisted record keeps only what meta.json keeps).
 */
export type JobView = Omit<JobRecord, 'snapshot'> & { snapshot?: SnapshotView };

export function presentJob(record: JobRecord, paths: Paths): JobView {
  if (!record.snapshot) return record as JobView;
  return { ...record, snapshot: toSnapshotView(record.snapshot, snapshotDir(paths, record.snapshot.id)) };
}
