import { createHash } from 'node:crypto';
import { cp, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { snapshotsDir, type Paths } from '../../../src/config.js';
import { ForksnapError } from '../../../src/errors.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';
import {
  beginSnapshot, deleteSnapshot, describeImage, listSnapshots, loadSnapshot, SNAPSHOT_SCHEMA_VERSION, snapshotImagePath, snapshotViewSchema, type SnapshotMeta,
} from '../../../src/snapshot/store.js';

let tmp: TempPaths;
let paths: Paths;

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
});
afterEach(() => tmp.cleanup());

function meta(id: string, overrides: Partial<SnapshotMeta> = {}): SnapshotMeta {
  return {
    version: 1,
    id,
    vm: 'vm1',
    createdAt: '2024-05-01T10:00:00.000Z',
    strategy: 'halt-then-migrate',
    consistency: 'clean',
    consistencyReason: 'guest shut down cleanly',
    parentDowntimeMs: 12,
    timeToStateMs: 800,
    timeToImageMs: 2500,
    phasesMs: { halt: 3, capture: 700 },
    disks: [{
      id: 'd0',
      source: '/vm/disk.qcow2',
      sourceFormat: 'qcow2',
      virtualSize: 1 << 30,
      backend: 'reflink',
      image: { file: 'd0.qcow2', format: 'qcow2', sizeBytes: 5, sha256: 'x' },
    }],
    labels: {},
    qemu: { binary: '/usr/bin/qemu-system-x86_64', version: '7.2.1' },
    job: 'job-1',
    ...overrides,
  };
}

async function makeSnapshot(id: string, overrides: Partial<SnapshotMeta> = {}): Promise<void> {
  const building = await beginSnapshot(paths, id);
  await writeFile(path.join(building.dir, 'd0.qcow2'), 'image');
  await building.commit(meta(id, overrides));
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(ForksnapError);
  return (error as ForksnapError).code;
}

describe('snapshot store', () => {
  it('builds a snapshot in a hidden partial directory and moves it into place on commit', async () => {
    const building = await beginSnapshot(paths, 'snap-1');
    expect(path.basename(building.dir)).toBe('.partial-snap-1');
    await writeFile(path.join(building.dir, 'd0.qcow2'), 'image');
    await expect(listSnapshots(paths)).resolves.toEqual([]);
    await building.commit(meta('snap-1'));
    expect(await readdir(snapshotsDir(paths))).toEqual(['snap-1']);
    const loaded = await loadSnapshot(paths, 'snap-1');
    const dir = path.join(snapshotsDir(paths), 'snap-1');
    expect(loaded).toEqual({
      ...meta('snap-1'),
      schemaVersion: SNAPSHOT_SCHEMA_VERSION,
      dir,
      disks: [{ ...meta('snap-1').disks[0], image: { ...meta('snap-1').disks[0]!.image, path: path.join(dir, 'd0.qcow2') } }],
      // Its own size on disk: image and meta.json, allocated blocks.
      sizeOnDiskBytes: expect.any(Number),
    });
    expect(loaded.sizeOnDiskBytes).toBeGreaterThan(0);
    expect(await readFile(snapshotImagePath(loaded, 'd0'), 'utf8')).toBe('image');
  });

  it('does not list a partial directory or a directory without valid metadata', async () => {
    await makeSnapshot('good');
    const partial = await beginSnapshot(paths, 'half');
    await writeFile(path.join(partial.dir, 'meta.json'), JSON.stringify(meta('half')));
    await mkdir(path.join(snapshotsDir(paths), 'junk'));
    await mkdir(path.join(snapshotsDir(paths), 'bad-meta'));
    await writeFile(path.join(snapshotsDir(paths), 'bad-meta', 'meta.json'), '{"version": 2}');
    expect((await listSnapshots(paths)).map((snapshot) => snapshot.id)).toEqual(['good']);
  });

  it('lists snapshots oldest first and filters by VM', async () => {
    await makeSnapshot('late', { createdAt: '2024-05-03T00:00:00.000Z' });
    await makeSnapshot('early', { createdAt: '2024-05-01T00:00:00.000Z' });
    await makeSnapshot('other-vm', { vm: 'vm2', createdAt: '2024-05-02T00:00:00.000Z' });
    expect((await listSnapshots(paths)).map((snapshot) => snapshot.id)).toEqual(['early', 'other-vm', 'late']);
    expect((await listSnapshots(paths, 'vm1')).map((snapshot) => snapshot.id)).toEqual(['early', 'late']);
  });

  it('returns an empty list when the store does not exist yet', async () => {
    await expect(listSnapshots(paths)).resolves.toEqual([]);
  });

  it('abort removes the partial directory', async () => {
    const building = await beginSnapshot(paths, 'snap-1');
    await writeFile(path.join(building.dir, 'd0.qcow2'), 'image');
    await building.abort();
    expect(await readdir(snapshotsDir(paths))).toEqual([]);
  });

  it('a new attempt starts from an empty partial directory', async () => {
    const first = await beginSnapshot(paths, 'snap-1');
    await writeFile(path.join(first.dir, 'leftover'), 'x');
    const second = await beginSnapshot(paths, 'snap-1');
    expect(await readdir(second.dir)).toEqual([]);
  });

  it('refuses an existing id with SNAPSHOT_EXISTS', async () => {
    await makeSnapshot('snap-1');
    expect(await codeOf(beginSnapshot(paths, 'snap-1'))).toBe('SNAPSHOT_EXISTS');
  });

  it('refuses metadata that does not validate and leaves nothing listed', async () => {
    const building = await beginSnapshot(paths, 'snap-1');
    await expect(building.commit({ ...meta('snap-1'), consistency: 'maybe' } as unknown as SnapshotMeta)).rejects.toThrow();
    await expect(listSnapshots(paths)).resolves.toEqual([]);
  });

  it('deletes a snapshot, and reports SNAPSHOT_NOT_FOUND for a missing one', async () => {
    await makeSnapshot('snap-1');
    await deleteSnapshot(paths, 'snap-1');
    expect(await readdir(snapshotsDir(paths))).toEqual([]);
    expect(await codeOf(deleteSnapshot(paths, 'snap-1'))).toBe('SNAPSHOT_NOT_FOUND');
    expect(await codeOf(loadSnapshot(paths, 'nope'))).toBe('SNAPSHOT_NOT_FOUND');
  });

  it.each(['../escape', '..', 'a/b', '.partial-x', '/etc', ''])('refuses the traversal or hidden name %j with INVALID_NAME', async (name) => {
    await mkdir(path.join(tmp.root, 'state', 'escape'), { recursive: true });
    expect(await codeOf(beginSnapshot(paths, name))).toBe('INVALID_NAME');
    expect(await codeOf(loadSnapshot(paths, name))).toBe('INVALID_NAME');
    expect(await codeOf(deleteSnapshot(paths, name))).toBe('INVALID_NAME');
    await expect(stat(path.join(tmp.root, 'state', 'escape'))).resolves.toBeTruthy();
  });

  it('snapshotImagePath refuses an unknown disk', async () => {
    await makeSnapshot('snap-1');
    const loaded = await loadSnapshot(paths, 'snap-1');
    expect(() => snapshotImagePath(loaded, 'd9')).toThrow(expect.objectContaining({ code: 'SNAPSHOT_NOT_FOUND' }));
  });

  it('describeImage reports the base name, size and sha256 of an image', async () => {
    const file = path.join(tmp.root, 'disk.raw');
    const content = Buffer.alloc(200_000, 7);
    await writeFile(file, content);
    await expect(describeImage(file, 'raw')).resolves.toEqual({
      file: 'disk.raw',
      format: 'raw',
      sizeBytes: 200_000,
      sha256: createHash('sha256').update(content).digest('hex'),
    });
  });

  it('keeps meta.json relative (no absolute path, no view fields) and shows programs absolute paths', async () => {
    const crash = { file: 'd0.crash.qcow2', format: 'qcow2' as const, sizeBytes: 6, sha256: 'y' };
    const building = await beginSnapshot(paths, 'snap-1');
    await writeFile(path.join(building.dir, 'd0.qcow2'), 'image');
    // Even a view handed to commit is stored as plain metadata.
    const view = { ...meta('snap-1', { disks: [{ ...meta('x').disks[0]!, crashImage: crash }] }), schemaVersion: 1, dir: '/elsewhere' };
    await building.commit(view as SnapshotMeta);
    const stored = JSON.parse(await readFile(path.join(snapshotsDir(paths), 'snap-1', 'meta.json'), 'utf8')) as Record<string, any>;
    expect(stored).not.toHaveProperty('dir');
    expect(stored).not.toHaveProperty('schemaVersion');
    expect(stored.disks[0].image).toEqual({ file: 'd0.qcow2', format: 'qcow2', sizeBytes: 5, sha256: 'x' });
    const [listed] = await listSnapshots(paths);
    const dir = path.join(snapshotsDir(paths), 'snap-1');
    expect(snapshotViewSchema.parse(listed)).toEqual(listed);
    expect(listed!.disks[0]!.image.path).toBe(path.join(dir, 'd0.qcow2'));
    expect(listed!.disks[0]!.crashImage!.path).toBe(path.join(dir, 'd0.crash.qcow2'));
    expect(path.isAbsolute(listed!.dir)).toBe(true);
  });

  it('a moved store still loads, with paths where the images are now', async () => {
    await makeSnapshot('snap-1');
    const moved = path.join(tmp.root, 'moved-state');
    await cp(paths.stateDir, moved, { recursive: true });
    await rm(paths.stateDir, { recursive: true });
    const loaded = await loadSnapshot({ ...paths, stateDir: moved }, 'snap-1');
    expect(loaded.disks[0]!.image.path).toBe(path.join(moved, 'snapshots', 'snap-1', 'd0.qcow2'));
    expect(await readFile(loaded.disks[0]!.image.path, 'utf8')).toBe('image');
  });
});
