import { constants } from 'node:fs';
import { copyFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { ForksnapError } from '../errors.js';
import type { DiskBackend, DiskBackendContext, DiskSnapshot } from './disk-backend.js';
import { snapshotFormat } from './disk-backend.js';
import { convertImage } from './qemu-img.js';
import { watchFreeSpace } from './space.js';
import { spaceReserveMiB } from '../jobs/space-preflight.js';
import type { ParentDisk } from '../vm/inspect.js';

/**
 * Reflink backend (XFS with reflink=1, btrfs): the snapshot is a FICLONE of the parent's top image,
 * made while the parent is paused and flushed. The parent's chain never changes.
 *
 * The clone lives next to the image (FICLONE needs the same filesystem, and a relative backing
 * reference in a qcow2 top must resolve the same way). It is made once before the halt, so the
 * child QEMU can open it early, and cloned again onto the same inode at the halt: FICLONE replaces
 * the destination's contents (and drops its page cache), and the child's image is still inactive
 * (-incoming) and re-reads everything when it activates after the state arrived.
 */
const UNSUPPORTED = new Set(['EOPNOTSUPP', 'ENOTSUP', 'EXDEV', 'EINVAL', 'ENOTTY', 'ENOSYS', 'EBADF', 'EPERM', 'EACCES', 'EROFS']);

async function ficlone(source: string, dest: string): Promise<void> {
  await copyFile(source, dest, constants.COPYFILE_FICLONE_FORCE);
}

export const reflinkBackend: DiskBackend = {
  name: 'reflink',
  async prepare(disk: ParentDisk, context: DiskBackendContext): Promise<DiskSnapshot | undefined> {
    const format = snapshotFormat(disk);
    const base = path.join(path.dirname(disk.file), `.forksnap-${context.jobId}-${disk.id}`);
    const clone = `${base}.${format}`;
    const crash = `${base}.crash.${format}`;
    try {
      await ficlone(disk.file, clone);
    } catch (error) {
      await rm(clone, { force: true });
      const code = (error as NodeJS.ErrnoException).code ?? '';
      if (UNSUPPORTED.has(code)) {
        context.log.info({ disk: disk.id, file: disk.file, code }, 'reflink not available for this disk');
        return undefined;
      }
      throw new ForksnapError('DISK_SNAPSHOT_FAILED', `reflink clone of ${disk.file} failed: ${(error as Error).message}`, { disk: disk.id, file: disk.file }, { cause: error });
    }
    const selfContained = disk.backingFiles.length === 0;
    const place = async (source: string, dest: string, signal: AbortSignal, onProgress: (percent: number) => void) => {
      if (selfContained) {
        try {
          await rename(source, dest);
          onProgress(100);
          return;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
        }
      }
      await convertImage({ file: source, format: disk.format }, { file: dest, format }, { signal, onProgress });
    };
    return {
      backend: 'reflink',
      disk,
      child: { path: clone, format },
      tempFiles: [clone, crash],
      journal: { files: [clone, crash] },
      // The clone pins the image's old extents: every guest overwrite from now on allocates new
      // space in the parent's own filesystem. The job must then stop the child and discard (only
      // that frees the pinned extents: the child holds the clone open).
      watch(onLow) {
        return watchFreeSpace({ path: path.dirname(disk.file), reserveBytes: context.spaceReserveBytes ?? spaceReserveMiB() * 1024 * 1024, log: context.log.child({ disk: disk.id, backend: 'reflink' }), onLow });
      },
      async commitAtHalt() {
        try {
          await ficlone(disk.file, clone);
        } catch (error) {
          throw new ForksnapError('DISK_SNAPSHOT_FAILED', `reflink clone of ${disk.file} at the halt failed: ${(error as Error).message}`, { disk: disk.id, file: disk.file }, { cause: error });
        }
        return {};
      },
      async keepCrashImage() {
        await ficlone(disk.file, crash);
      },
      materialise: (dest, signal, onProgress) => place(clone, dest, signal, onProgress),
      materialiseCrashImage: (dest, signal, onProgress) => place(crash, dest, signal, onProgress),
      async finish() {
        await Promise.all([rm(clone, { force: true }), rm(crash, { force: true })]);
      },
      async discard() {
        await Promise.all([rm(clone, { force: true }), rm(crash, { force: true })]);
      },
    };
  },
};
