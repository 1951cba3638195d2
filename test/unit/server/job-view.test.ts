import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { resolvePaths } from '../../../src/config.js';
import { jobRecordSchema, newJobRecord } from '../../../src/jobs/job-record.js';
import { presentJob } from '../../../src/server/job-view.js';

describe('presentJob', () => {
  it('gives a succeeded job\'s snapshot absolute image paths where the store is now, even for a record persisted without them', () => {
    const paths = resolvePaths({ stateDir: '/srv/forksnap-state' });
    const record = jobRecordSchema.parse({
      ...newJobRecord('j1', { vm: 'db1', strategy: 'auto', diskBackend: 'auto', keepCrashImage: false, labels: {}, requireClean: false, verify: false, storage: 'full', backgroundPush: 'off' }, 'api'),
      status: 'succeeded',
      snapshot: {
        version: 1, id: 'db1-1', vm: 'db1', createdAt: '2026-12-01T00:00:00.000Z', strategy: 'fork', consistency: 'clean', consistencyReason: 'r',
        parentDowntimeMs: 1, timeToStateMs: 2, timeToImageMs: 3, phasesMs: {}, labels: {}, qemu: { binary: 'q', version: '7.2.1' }, job: 'j1',
        disks: [{ id: 'dj', source: '/vm/j.qcow2', sourceFormat: 'qcow2', virtualSize: 1, backend: 'reflink', image: { file: 'dj.qcow2', format: 'qcow2', sizeBytes: 1, sha256: 'x' } }],
      },
    });
    const shown = presentJob(record, paths);
    expect(shown.snapshot).toMatchObject({ schemaVersion: 1, dir: '/srv/forksnap-state/snapshots/db1-1', disks: [{ image: { path: path.join('/srv/forksnap-state/snapshots/db1-1', 'dj.qcow2'), file: 'dj.qcow2' } }] });
    expect(presentJob({ ...record, snapshot: undefined }, paths).snapshot).toBeUndefined();
  });
});
