import { mkdir, open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { locksDir, type Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { isAlive } from '../qemu/process-info.js';

/**
 * One job per VM at a time, across processes (CLI invocations and the daemon): a lock file created
 * with O_EXCL holding the owner's pid and job id. A lock whose owner process is dead is stale and
 * taken over.
 */
export async function lockVm(paths: Paths, vm: string, job: string): Promise<() => Promise<void>> {
  const dir = locksDir(paths);
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${vm}.lock`);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(file, 'wx');
      await handle.writeFile(JSON.stringify({ pid: process.pid, job, since: new Date().toISOString() }));
      await handle.close();
      return async () => {
        const owner = await readOwner(file);
        if (owner?.job === job) await rm(file, { force: true });
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const owner = await readOwner(file);
      if (owner && owner.pid !== process.pid && (await isAlive(owner.pid))) {
        throw new ForksnapError('VM_BUSY', `VM "${vm}" is busy: job ${owner.job} (pid ${owner.pid}) has held it since ${owner.since}`, { vm, owner });
      }
      if (owner && owner.pid === process.pid) {
        throw new ForksnapError('VM_BUSY', `VM "${vm}" is busy: job ${owner.job} of this process holds it`, { vm, owner });
      }
      await rm(file, { force: true });
    }
  }
  throw new ForksnapError('VM_BUSY', `could not lock VM "${vm}"`, { vm });
}

async function readOwner(file: string): Promise<{ pid: number; job: string; since: string } | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as { pid: number; job: string; since: string };
  } catch {
    return undefined;
  }
}
