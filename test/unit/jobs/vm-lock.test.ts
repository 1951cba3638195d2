import { spawnSync } from 'node:child_process';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { locksDir, type Paths } from '../../../src/config.js';
import { ForksnapError } from '../../../src/errors.js';
import { lockVm } from '../../../src/jobs/vm-lock.js';
import { isAlive } from '../../../src/qemu/process-info.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

let tmp: TempPaths;
let paths: Paths;
const lockFile = () => path.join(locksDir(paths), 'vm1.lock');

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
});
afterEach(() => tmp.cleanup());

async function writeOwner(owner: unknown): Promise<void> {
  await mkdir(locksDir(paths), { recursive: true });
  await writeFile(lockFile(), typeof owner === 'string' ? owner : JSON.stringify(owner));
}

async function busy(promise: Promise<unknown>): Promise<ForksnapError> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(ForksnapError);
  expect((error as ForksnapError).code).toBe('VM_BUSY');
  return error as ForksnapError;
}

/** A pid that certainly belonged to a process that has exited (and been reaped). */
async function deadPid(): Promise<number> {
  const pid = spawnSync('true').pid;
  expect(await isAlive(pid)).toBe(false);
  return pid;
}

describe('lockVm', () => {
  it('writes the owner pid and job into the lock file and removes it on release', async () => {
    const release = await lockVm(paths, 'vm1', 'job-a');
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toMatchObject({ pid: process.pid, job: 'job-a', since: expect.any(String) });
    await release();
    expect(await readdir(locksDir(paths))).toEqual([]);
    // Free again: a new job can lock it.
    const again = await lockVm(paths, 'vm1', 'job-b');
    await again();
  });

  it('refuses a second lock of the same VM with VM_BUSY naming the holder', async () => {
    const release = await lockVm(paths, 'vm1', 'job-a');
    const error = await busy(lockVm(paths, 'vm1', 'job-b'));
    expect(error.message).toContain('job job-a');
    expect(error.context).toMatchObject({ vm: 'vm1', owner: { job: 'job-a', pid: process.pid } });
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toMatchObject({ job: 'job-a' });
    await release();
  });

  it('locks different VMs independently', async () => {
    const a = await lockVm(paths, 'vm1', 'job-a');
    const b = await lockVm(paths, 'vm2', 'job-b');
    await Promise.all([a(), b()]);
  });

  it('refuses a lock held by another live process', async () => {
    expect(await isAlive(process.ppid)).toBe(true);
    await writeOwner({ pid: process.ppid, job: 'job-other', since: '2024-01-01T00:00:00.000Z' });
    const error = await busy(lockVm(paths, 'vm1', 'job-a'));
    expect(error.message).toContain(`job job-other (pid ${process.ppid})`);
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toMatchObject({ job: 'job-other' });
  });

  it('takes over a stale lock whose owner process is dead', async () => {
    await writeOwner({ pid: await deadPid(), job: 'job-dead', since: '2024-01-01T00:00:00.000Z' });
    const release = await lockVm(paths, 'vm1', 'job-a');
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toMatchObject({ pid: process.pid, job: 'job-a' });
    await release();
  });

  it('takes over a lock file that is not JSON (torn write of a dead process)', async () => {
    await writeOwner('{"pid": 12');
    const release = await lockVm(paths, 'vm1', 'job-a');
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toMatchObject({ job: 'job-a' });
    await release();
  });

  it('release does not remove a lock that another job holds by then', async () => {
    const release = await lockVm(paths, 'vm1', 'job-a');
    await writeOwner({ pid: process.pid, job: 'job-b', since: new Date().toISOString() });
    await release();
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toMatchObject({ job: 'job-b' });
  });
});
