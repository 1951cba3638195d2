import { link, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { locksDir, type Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { isAlive } from '../qemu/process-info.js';

/**
 * One job per VM at a time, across processes (CLI invocations and the daemon): <locks>/<vm>.lock
 * holds the owner's pid and job id. It is created whole and atomically (the owner record is
 * written to a private file first and hard-linked into place: link() fails if the lock exists), so
 * no one ever reads a half-written lock. A lock whose owner process is dead is stale: it is taken
 * over by renaming it away first, which only one contender can do.
 */
interface Owner {
  pid: number;
  job: string;
  since: string;
}

export async function lockVm(paths: Paths, vm: string, job: string): Promise<() => Promise<void>> {
  const dir = locksDir(paths);
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${vm}.lock`);
  const mine = path.join(dir, `.${vm}.lock.${process.pid}.${job}`);
  await writeFile(mine, JSON.stringify({ pid: process.pid, job, since: new Date().toISOString() } satisfies Owner));
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await link(mine, file);
        return async () => {
          const owner = await readOwner(file);
          if (owner?.job === job && owner.pid === process.pid) await rm(file, { force: true });
        };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const owner = await readOwner(file);
      if (owner && (await isAlive(owner.pid))) {
        const whose = owner.pid === process.pid ? 'of this process' : `(pid ${owner.pid})`;
        throw new ForksnapError('VM_BUSY', `VM "${vm}" is busy: job ${owner.job} ${whose} has held it since ${owner.since}`, { vm, owner });
      }
      // Stale (dead owner, or unreadable): move it aside; if someone else did first, look again.
      const aside = path.join(dir, `.${vm}.lock.stale.${process.pid}.${job}`);
      try {
        await rename(file, aside);
      } catch {
        continue;
      }
      const moved = await readOwner(aside);
      if (moved && (await isAlive(moved.pid))) {
        // A live lock appeared between our read and the rename: put it back and report busy.
        await link(aside, file).catch(() => {});
        await rm(aside, { force: true });
        throw new ForksnapError('VM_BUSY', `VM "${vm}" is busy: job ${moved.job} (pid ${moved.pid}) holds it`, { vm, owner: moved });
      }
      await rm(aside, { force: true });
    }
    throw new ForksnapError('VM_BUSY', `could not lock VM "${vm}": the lock kept changing hands`, { vm });
  } finally {
    await rm(mine, { force: true });
  }
}

async function readOwner(file: string): Promise<Owner | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Owner;
  } catch {
    return undefined;
  }
}
