import { mkdir, readFile, readdir, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Paths } from '../../../src/config.js';
import { JobJournal, journalDir, readJournal, readJournals } from '../../../src/jobs/journal.js';
import { processIdentity } from '../../../src/qemu/process-info.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

let tmp: TempPaths;
let paths: Paths;

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
});
afterEach(() => tmp.cleanup());

const newJournal = (job = 'job-1') => new JobJournal(paths, { job, vm: 'vm1', parentSocket: '/run/vm1.qmp' });
const journalFile = (job = 'job-1') => path.join(journalDir(paths), `${job}.json`);

describe('JobJournal', () => {
  it('starts in preflight with nothing to undo, owned by this process', () => {
    expect(newJournal().entry).toEqual({
      version: 2,
      job: 'job-1',
      vm: 'vm1',
      parentSocket: '/run/vm1.qmp',
      pid: process.pid,
      startedAt: expect.any(String),
      phase: 'preflight',
      halted: false,
      tempFiles: [],
      overlays: [],
    });
  });

  it('persists every update through a temporary file and rename, leaving no temp file', async () => {
    const journal = newJournal();
    await journal.update(() => ({ phase: 'halt', halted: true }));
    await journal.update((entry) => ({ tempFiles: [...entry.tempFiles, '/work/a.qcow2'] }));
    const onDisk = JSON.parse(await readFile(journalFile(), 'utf8'));
    expect(onDisk).toEqual(journal.entry);
    expect(onDisk).toMatchObject({ phase: 'halt', halted: true, tempFiles: ['/work/a.qcow2'] });
    expect(await readdir(journalDir(paths))).toEqual(['job-1.json']);
  });

  it('serialises concurrent updates so the file ends with all of them', async () => {
    const journal = newJournal();
    await Promise.all(Array.from({ length: 10 }, (_, n) => journal.update((entry) => ({ tempFiles: [...entry.tempFiles, `/tmp/f${n}`] }))));
    const onDisk = JSON.parse(await readFile(journalFile(), 'utf8'));
    expect(onDisk.tempFiles).toEqual(Array.from({ length: 10 }, (_, n) => `/tmp/f${n}`));
  });

  it('records the owner process by pid, start time and boot on the first write', async () => {
    const journal = newJournal();
    await journal.update(() => ({}));
    const onDisk = await readJournal(paths, 'job-1');
    expect(onDisk?.owner).toEqual(await processIdentity(process.pid));
  });

  it('a failed write rejects that update only; the next update persists both changes', async () => {
    const journal = newJournal();
    await journal.update(() => ({ phase: 'prepare' }));
    // A directory where the temporary file goes makes the write fail (as ENOSPC would).
    await mkdir(`${journalFile()}.tmp`);
    await expect(journal.update(() => ({ halted: true }))).rejects.toThrow(/EISDIR/);
    expect(JSON.parse(await readFile(journalFile(), 'utf8'))).toMatchObject({ phase: 'prepare', halted: false });
    await expect(journal.update(() => ({ phase: 'halt' }))).rejects.toThrow(/EISDIR/);
    await rmdir(`${journalFile()}.tmp`);
    await journal.update(() => ({ migrationStarted: true }));
    expect(JSON.parse(await readFile(journalFile(), 'utf8'))).toMatchObject({ phase: 'halt', halted: true, migrationStarted: true });
    await journal.remove();
    expect(await readdir(journalDir(paths))).toEqual([]);
  });

  it('records what disk backends added, replacing an earlier record of the same disk', async () => {
    const journal = newJournal();
    await journal.recordDisk({ disk: 'd0', backend: 'fleecing', nodes: ['n1'], files: ['/w/f.qcow2'] });
    await journal.recordDisk({ disk: 'd1', backend: 'reflink', files: ['/vm/.forksnap-x'] });
    await journal.recordDisk({ disk: 'd0', backend: 'fleecing', nodes: ['n1', 'n2'], jobs: ['j1'], exports: ['e1'], nbdServer: true, files: ['/w/f.qcow2'] });
    expect((await readJournal(paths, 'job-1'))?.disks).toEqual([
      { disk: 'd1', backend: 'reflink', files: ['/vm/.forksnap-x'] },
      { disk: 'd0', backend: 'fleecing', nodes: ['n1', 'n2'], jobs: ['j1'], exports: ['e1'], nbdServer: true, files: ['/w/f.qcow2'] },
    ]);
  });

  it('remove deletes the journal file', async () => {
    const journal = newJournal();
    await journal.update(() => ({ phase: 'capture' }));
    await journal.remove();
    expect(await readdir(journalDir(paths))).toEqual([]);
    await journal.remove();
  });
});

describe('readJournals', () => {
  it('returns nothing when the directory does not exist', async () => {
    await expect(readJournals(paths)).resolves.toEqual([]);
  });

  it('reads valid journals and skips torn, invalid and foreign files', async () => {
    const a = newJournal('job-a');
    await a.update(() => ({ phase: 'capture', childPid: 1234, overlays: [{ disk: 'd0', overlayNode: 'ov', baseNode: 'base', overlayFile: '/w/ov.qcow2', baseFile: '/vm/d0.qcow2' }] }));
    await mkdir(journalDir(paths), { recursive: true });
    await writeFile(path.join(journalDir(paths), 'torn.json'), '{"job": "torn", "vm":');
    await writeFile(path.join(journalDir(paths), 'invalid.json'), JSON.stringify({ job: 'invalid', vm: 'vm1' }));
    await writeFile(path.join(journalDir(paths), 'job-a.json.tmp'), '{}');
    const entries = await readJournals(paths);
    expect(entries).toEqual([a.entry]);
    expect(await readJournal(paths, 'job-a')).toEqual(a.entry);
    expect(await readJournal(paths, 'nope')).toBeUndefined();
  });
});
