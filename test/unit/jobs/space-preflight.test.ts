import { statfs, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { allocatedBytes, checkSpace, DEFAULT_SPACE_RESERVE_MIB, spaceReserveMiB } from '../../../src/jobs/space-preflight.js';
import { isForksnapError } from '../../../src/errors.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

/** Real files and real filesystems (qemu-img for the allocation): the numbers come from the kernel. */
let tmp: TempPaths;
beforeEach(async () => {
  tmp = await tempPaths();
});
afterEach(() => tmp.cleanup());

const MiB = 1024 * 1024;

describe('space preflight', () => {
  it('estimates from what is allocated: a sparse raw file counts its written blocks, not its size', async () => {
    const raw = path.join(tmp.root, 'sparse.raw');
    await writeFile(raw, Buffer.alloc(2 * MiB, 1));
    await truncate(raw, 1024 * MiB);
    const bytes = await allocatedBytes(raw);
    expect(bytes).toBeGreaterThanOrEqual(2 * MiB);
    expect(bytes).toBeLessThan(8 * MiB);
  });

  it('counts a qcow2 overlay\'s whole backing chain (the snapshot image is self-contained)', async () => {
    const base = path.join(tmp.root, 'base.raw');
    await writeFile(base, Buffer.alloc(4 * MiB, 2));
    const top = path.join(tmp.root, 'top.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', top]);
    expect(await allocatedBytes(top)).toBeGreaterThanOrEqual(4 * MiB);
  });

  it('passes with room to spare and reports what it measured', async () => {
    const disk = path.join(tmp.root, 'd.raw');
    await writeFile(disk, Buffer.alloc(MiB, 3));
    const report = await checkSpace({ disks: [{ id: 'd', file: disk }], storeDir: path.join(tmp.paths.stateDir, 'snapshots'), fleecingDir: path.join(tmp.paths.stateDir, 'work'), reserveMiB: 1 });
    expect(report.sameFilesystem).toBe(true);
    expect(report.perDisk.d).toBeGreaterThanOrEqual(MiB);
    expect(report.storeFreeBytes).toBeGreaterThan(0);
  });

  it('refuses with NO_SPACE when the reserve does not fit beside the images', async () => {
    const disk = path.join(tmp.root, 'd.raw');
    await writeFile(disk, Buffer.alloc(MiB, 3));
    const fs = await statfs(tmp.root);
    const tooMuch = Math.ceil((fs.bavail * fs.bsize) / MiB) + 1;
    const error = await checkSpace({ disks: [{ id: 'd', file: disk }], storeDir: path.join(tmp.root, 'store'), fleecingDir: path.join(tmp.root, 'work'), reserveMiB: tooMuch }).catch((e: unknown) => e);
    expect(isForksnapError(error, 'NO_SPACE')).toBe(true);
    expect((error as Error).message).toMatch(/reserve/);
  });

  it('the reserve comes from the option, else FORKSNAP_SPACE_RESERVE_MIB, else 512 MiB; garbage is refused', () => {
    const saved = process.env.FORKSNAP_SPACE_RESERVE_MIB;
    try {
      delete process.env.FORKSNAP_SPACE_RESERVE_MIB;
      expect(spaceReserveMiB()).toBe(DEFAULT_SPACE_RESERVE_MIB);
      process.env.FORKSNAP_SPACE_RESERVE_MIB = '64';
      expect(spaceReserveMiB()).toBe(64);
      expect(spaceReserveMiB(8)).toBe(8);
      process.env.FORKSNAP_SPACE_RESERVE_MIB = 'lots';
      expect(() => spaceReserveMiB()).toThrow(/whole number/);
    } finally {
      if (saved === undefined) delete process.env.FORKSNAP_SPACE_RESERVE_MIB;
      else process.env.FORKSNAP_SPACE_RESERVE_MIB = saved;
    }
  });
});
