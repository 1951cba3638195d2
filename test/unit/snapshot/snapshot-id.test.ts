import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { snapshotsDir, type Paths } from '../../../src/config.js';
import { defaultSnapshotId, vmPart } from '../../../src/snapshot/snapshot-id.js';
import { NAME_PATTERN, validateName } from '../../../src/validate-name.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

let tmp: TempPaths;
let paths: Paths;
const NOW = new Date('2026-12-01T22:30:05.123Z');

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
});
afterEach(() => tmp.cleanup());

/** Take `count` default ids in a row at the same second, each committed to the store like a job does. */
async function takeIds(vm: string, count: number): Promise<string[]> {
  const ids: string[] = [];
  for (let index = 0; index < count; index++) {
    const id = await defaultSnapshotId(paths, vm, NOW);
    await mkdir(path.join(snapshotsDir(paths), id), { recursive: true });
    ids.push(id);
  }
  return ids;
}

describe('defaultSnapshotId', () => {
  it('a 64-character VM name and 100 snapshots in the same second: 100 distinct valid ids within 64 characters', async () => {
    const vm = `v${'m'.repeat(62)}1`;
    expect(vm).toHaveLength(64);
    const started = Date.now();
    const ids = await takeIds(vm, 100);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(new Set(ids).size).toBe(100);
    for (const id of ids) {
      expect(id.length).toBeLessThanOrEqual(64);
      expect(id).toMatch(NAME_PATTERN);
      expect(validateName('snapshot', id)).toBe(id);
      expect(id.startsWith(`${vmPart(vm)}-20261201-223005`)).toBe(true);
    }
    expect(ids[0]).toBe(`${vmPart(vm)}-20261201-223005`);
    expect(ids[1]).toBe(`${vmPart(vm)}-20261201-223005-2`);
    expect(ids[99]).toBe(`${vmPart(vm)}-20261201-223005-100`);
  });

  it('the case that froze the CLI: a 56-character VM name, third snapshot in the same second', async () => {
    const ids = await takeIds('a'.repeat(56), 3);
    expect(new Set(ids).size).toBe(3);
  });

  it('keeps a short VM name whole', async () => {
    expect(await takeIds('db1', 2)).toEqual(['db1-20261201-223005', 'db1-20261201-223005-2']);
    const forty = 'x'.repeat(40);
    expect(await defaultSnapshotId(paths, forty, NOW)).toBe(`${forty}-20261201-223005`);
  });

  it('two long VM names sharing their first 60 characters get different ids', async () => {
    const a = `${'p'.repeat(60)}aaaa`;
    const b = `${'p'.repeat(60)}bbbb`;
    expect(await defaultSnapshotId(paths, a, NOW)).not.toBe(await defaultSnapshotId(paths, b, NOW));
  });

  it('counts snapshots being built (.partial-<id>) as taken', async () => {
    await mkdir(path.join(snapshotsDir(paths), '.partial-db1-20261201-223005'), { recursive: true });
    expect(await defaultSnapshotId(paths, 'db1', NOW)).toBe('db1-20261201-223005-2');
  });

  it('works on an empty state directory (no snapshots/ yet)', async () => {
    expect(await defaultSnapshotId(paths, 'db1', NOW)).toBe('db1-20261201-223005');
  });
});
