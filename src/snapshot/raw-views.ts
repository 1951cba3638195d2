import { execa, type ResultPromise } from 'execa';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { ForksnapError, errorMessage } from '../errors.js';

/**
 * Read-only raw views of a disk image (raw or qcow2, its backing chain included) as plain files,
 * for tools that only read raw block devices or files (e2fsck, dumpe2fs, xfs_repair, blkid, partx):
 * one qemu-storage-daemon (Debian's qemu-system-common) with a FUSE export per range, each a byte
 * range of the guest disk (the whole disk, or one partition). Nothing can write through them
 * (read-only nodes, `writable=off`). The image is opened with a shared lock: while a view is open, a merge (snapshot delete) that would write the image fails instead of changing it under the reader.
 *
 * `close()` stops the daemon (which unmounts its exports) and removes the mount points; if the
 * daemon could not unmount, a lazy unmount is tried and logged.
 */
export interface RawRange {
  readonly name: string;
  /** Byte offset into the guest disk (default 0) and length (default: to the end). */
  readonly offset?: number;
  readonly size?: number;
}

export interface RawViews {
  /** The file of each range, by name. */
  readonly files: Record<string, string>;
  close(): Promise<void>;
}

export function storageDaemonBinary(): string {
  return process.env.FORKSNAP_QEMU_STORAGE_DAEMON ?? 'qemu-storage-daemon';
}

const READY_TIMEOUT_MS = 20_000;

export async function openRawViews(image: { file: string; format: 'raw' | 'qcow2' }, ranges: readonly RawRange[], options: { signal: AbortSignal; log: Logger }): Promise<RawViews> {
  const dir = await mkdtemp(path.join(tmpdir(), 'forksnap-view-'));
  const files: Record<string, string> = {};
  const args = ['--blockdev', `driver=${image.format},node-name=img,read-only=on,file.driver=file,file.filename=${escapeOption(image.file)}`];
  ranges.forEach((range, index) => {
    const file = path.join(dir, `${index}.raw`);
    files[range.name] = file;
    let node = 'img';
    if (range.offset !== undefined || range.size !== undefined) {
      node = `r${index}`;
      args.push('--blockdev', `driver=raw,node-name=${node},read-only=on,file=img${range.offset !== undefined ? `,offset=${range.offset}` : ''}${range.size !== undefined ? `,size=${range.size}` : ''}`);
    }
    args.push('--export', `type=fuse,id=e${index},node-name=${node},mountpoint=${escapeOption(file)},writable=off`);
  });
  const pidFile = path.join(dir, 'qsd.pid');
  args.push('--pidfile', pidFile);
  for (const file of Object.values(files)) await writeFile(file, '');
  let daemon: ResultPromise | undefined;
  const close = async () => {
    if (daemon) {
      daemon.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const ended = await Promise.race([daemon.then(() => true, () => true), new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), 10_000); })]);
      clearTimeout(timer);
      if (!ended) {
        options.log.warn({ image: image.file }, 'qemu-storage-daemon did not stop on SIGTERM; killing it');
        daemon.kill('SIGKILL');
        await daemon.catch(() => undefined);
      }
      daemon = undefined;
    }
    for (const file of Object.values(files)) {
      if (await isMounted(file)) {
        options.log.warn({ file }, 'a FUSE export is still mounted after qemu-storage-daemon exited; unmounting it lazily');
        const result = await execa('umount', ['-l', file], { reject: false });
        if (result.exitCode !== 0) options.log.error({ file, output: result.stderr }, 'could not unmount a stale FUSE export');
      }
    }
    await rm(dir, { recursive: true, force: true }).catch((error: unknown) => options.log.error({ dir, err: errorMessage(error) }, 'could not remove the raw-view directory'));
  };
  try {
    daemon = execa(storageDaemonBinary(), args, { reject: false, all: true, stdin: 'ignore', cancelSignal: options.signal });
    const deadline = Date.now() + READY_TIMEOUT_MS;
    // Ready when every export is mounted (the pid file is written after the exports are set up).
    for (;;) {
      if (options.signal.aborted) throw options.signal.reason;
      if (daemon.exitCode !== null && daemon.exitCode !== undefined) break;
      const mounted = await Promise.all(Object.values(files).map(isMounted));
      if (mounted.every(Boolean) && (await readFile(pidFile, 'utf8').then(() => true, () => false))) return { files, close };
      if (Date.now() > deadline) break;
      await sleep(50);
    }
    daemon.kill('SIGKILL');
    const result = await daemon;
    throw new ForksnapError('TOOL_FAILED', `qemu-storage-daemon could not export ${image.file} read-only over FUSE (${result.exitCode !== undefined ? `exit ${result.exitCode}` : result.signal ?? result.shortMessage}): ${String(result.all ?? '').trim().slice(-1500)}`, { image: image.file, command: result.command });
  } catch (error) {
    await close();
    throw error;
  }
}

/** In a QEMU option value a comma is written twice. */
function escapeOption(value: string): string {
  return value.replaceAll(',', ',,');
}

async function isMounted(file: string): Promise<boolean> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const escaped = file.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
  return mounts.split('\n').some((line) => line.split(' ')[4] === escaped);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
