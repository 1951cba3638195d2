import { execa } from 'execa';
import { connect } from 'node:net';
import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError, errorMessage } from '../errors.js';
import { workRoot } from '../config.js';
import { convertImage, imageInfo, qemuImgBinary } from './qemu-img.js';
import { loadSnapshot, type SnapshotView } from './store.js';

/**
 * `forksnap snapshot export`: one disk of a stored snapshot, out of the store.
 *
 *   --to FILE [--format qcow2|raw]   a self-contained copy (`qemu-img convert`: an incremental
 *                                    image's backing chain is flattened into it), written under a
 *                                    temporary name and renamed into place when complete
 *   --nbd SOCKET [--since ID2]       the disk served read-only over NBD on a UNIX socket, export
 *                                    name DISK (qemu-nbd from qemu-utils), until the signal aborts;
 *                                    with --since, the blocks that differ from snapshot ID2 as the
 *                                    metadata context qemu:dirty-bitmap:ID2
 *
 * The stored image is never written: qemu-img reads it, qemu-nbd opens it read-only.
 */
export function qemuNbdBinary(): string {
  return process.env.FORKSNAP_QEMU_NBD ?? 'qemu-nbd';
}

function diskOf(snapshot: SnapshotView, diskId: string): SnapshotView['disks'][number] {
  const disk = snapshot.disks.find((entry) => entry.id === diskId);
  if (!disk) throw new ForksnapError('SNAPSHOT_NOT_FOUND', `snapshot ${snapshot.id} has no disk "${diskId}" (its disks: ${snapshot.disks.map((entry) => entry.id).join(', ')})`, { snapshot: snapshot.id, disk: diskId });
  return disk;
}

export interface ExportedFile {
  readonly snapshot: string;
  readonly disk: string;
  readonly file: string;
  readonly format: 'raw' | 'qcow2';
  readonly sizeBytes: number;
  readonly virtualSize: number;
}

export async function exportToFile(paths: Paths, id: string, diskId: string, to: string, options: { format?: 'raw' | 'qcow2' | undefined; signal: AbortSignal; log: Logger; onProgress?: (percent: number) => void }): Promise<ExportedFile> {
  const snapshot = await loadSnapshot(paths, id);
  const disk = diskOf(snapshot, diskId);
  const file = path.resolve(to);
  if (await stat(file).then(() => true, () => false)) throw new ForksnapError('INVALID_INPUT', `${file} exists already; export writes a new file only`, { file });
  const format = options.format ?? disk.image.format;
  const partial = path.join(path.dirname(file), `.${path.basename(file)}.forksnap-partial`);
  const started = Date.now();
  try {
    await convertImage({ file: disk.image.path, format: disk.image.format }, { file: partial, format }, { signal: options.signal, ...(options.onProgress ? { onProgress: options.onProgress } : {}) });
    await rename(partial, file);
  } catch (error) {
    await rm(partial, { force: true }).catch((cleanup: unknown) => options.log.error({ file: partial, err: errorMessage(cleanup) }, 'could not remove a partial export'));
    throw error;
  }
  const info = await imageInfo(file, { signal: options.signal });
  const { size } = await stat(file);
  options.log.info({ snapshot: id, disk: diskId, file, format, durationMs: Date.now() - started }, 'disk exported to a file');
  return { snapshot: id, disk: diskId, file, format, sizeBytes: size, virtualSize: info['virtual-size'] };
}

export interface NbdExport {
  readonly snapshot: string;
  readonly disk: string;
  readonly socket: string;
  readonly exportName: string;
  /** NBD URI as qemu-img, qemu-io and libnbd (nbdinfo) take it. */
  readonly uri: string;
  /** With --since: the NBD metadata context of the changed blocks, and how many bytes the overlay holds. */
  readonly metaContext?: string;
  readonly changedBytes?: number;
  /** Resolves when the server has stopped (after the signal aborted, or if it died). */
  readonly done: Promise<void>;
}

const READY_TIMEOUT_MS = 20_000;

/**
 * Serve a disk of a snapshot read-only over NBD until `signal` aborts; resolves once the socket
 * accepts connections. The socket is removed when the server stops.
 */
export async function serveNbd(paths: Paths, id: string, diskId: string, socket: string, options: { since?: string | undefined; signal: AbortSignal; log: Logger }): Promise<NbdExport> {
  const snapshot = await loadSnapshot(paths, id);
  const disk = diskOf(snapshot, diskId);
  const socketPath = path.resolve(socket);
  if (await stat(socketPath).then(() => true, () => false)) throw new ForksnapError('INVALID_INPUT', `${socketPath} exists already (another server, or a stale socket: remove it first)`, { socket: socketPath });
  let served = { file: disk.image.path, format: disk.image.format as string };
  let bitmap: ChangedBlocks | undefined;
  if (options.since !== undefined) {
    bitmap = await changedBlocksSince(paths, snapshot, disk, options.since, options.signal);
    served = { file: bitmap.file, format: 'qcow2' };
  }
  // --shared=0: any number of clients; --persistent: keep serving after a client leaves.
  const args = ['--read-only', '--persistent', '--shared=0', '--socket', socketPath, '--export-name', diskId, '--format', served.format, ...(bitmap ? ['--bitmap', bitmap.name] : []), served.file];
  const server = execa(qemuNbdBinary(), args, { reject: false, all: true, stdin: 'ignore', cancelSignal: options.signal, killSignal: 'SIGTERM', forceKillAfterDelay: 5000 });
  const done = server.then(async (result) => {
    await rm(socketPath, { force: true });
    if (bitmap) await bitmap.remove();
    if (!options.signal.aborted) options.log.error({ exitCode: result.exitCode, output: String(result.all ?? '').slice(-1000) }, 'qemu-nbd stopped by itself');
  });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!(await accepts(socketPath))) {
    if (server.exitCode !== null && server.exitCode !== undefined) {
      const result = await server;
      throw new ForksnapError('TOOL_FAILED', `qemu-nbd could not serve ${disk.image.path} (exit ${result.exitCode}): ${String(result.all ?? '').trim().slice(-1500)}`, { command: result.command, exitCode: result.exitCode });
    }
    if (options.signal.aborted) {
      await done;
      throw options.signal.reason;
    }
    if (Date.now() > deadline) {
      server.kill('SIGKILL');
      await done;
      throw new ForksnapError('TOOL_FAILED', `qemu-nbd did not open ${socketPath} within ${READY_TIMEOUT_MS / 1000} s`, { socket: socketPath });
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  options.log.info({ snapshot: id, disk: diskId, socket: socketPath, pid: server.pid }, 'serving the disk read-only over NBD');
  return { snapshot: id, disk: diskId, socket: socketPath, exportName: diskId, uri: `nbd+unix:///${encodeURIComponent(diskId)}?socket=${socketPath}`, ...(bitmap ? { metaContext: `qemu:dirty-bitmap:${bitmap.name}`, changedBytes: bitmap.changedBytes } : {}), done };
}

interface ChangedBlocks {
  /** A temporary qcow2 (in the work directory) reading exactly as the snapshot's image, holding the bitmap. */
  readonly file: string;
  readonly name: string;
  readonly changedBytes: number;
  remove(): Promise<void>;
}

/**
 * The blocks of `disk` that differ between snapshot `since` and `snapshot`, as a persistent dirty
 * bitmap named after `since`, in a temporary overlay that reads exactly as the snapshot's image.
 * Compare-based, like incremental storage: an empty overlay over the snapshot's image, with an
 * enabled bitmap, is rebased (safe mode) onto `since`'s image, so the bitmap records every range
 * where the two differ (what the guest changed and what the child's shutdown wrote); the overlay
 * is then put back onto the snapshot's image (unsafe rebase: header only; its clusters hold the
 * snapshot's own data) and the bitmap disabled for the read-only export.
 */
async function changedBlocksSince(paths: Paths, snapshot: SnapshotView, disk: SnapshotView['disks'][number], since: string, signal: AbortSignal): Promise<ChangedBlocks> {
  const base = await loadSnapshot(paths, since);
  if (base.vm !== snapshot.vm) throw new ForksnapError('INVALID_INPUT', `--since ${since} is a snapshot of VM ${base.vm}, not of ${snapshot.vm}`, { since });
  if (base.createdAt > snapshot.createdAt) throw new ForksnapError('INVALID_INPUT', `--since ${since} was taken after ${snapshot.id}`, { since });
  const old = base.disks.find((entry) => entry.id === disk.id);
  if (!old) throw new ForksnapError('SNAPSHOT_NOT_FOUND', `snapshot ${since} has no disk "${disk.id}"`, { snapshot: since, disk: disk.id });
  if (old.virtualSize !== disk.virtualSize) throw new ForksnapError('INVALID_INPUT', `disk ${disk.id} changed size between ${since} and ${snapshot.id}: no changed-block map`, { since });
  await mkdir(workRoot(paths), { recursive: true });
  const dir = await mkdtemp(path.join(workRoot(paths), 'export-'));
  const file = path.join(dir, `${disk.id}.since.qcow2`);
  const name = since;
  const run = async (args: string[]) => {
    const result = await execa(qemuImgBinary(), args, { reject: false, all: true, cancelSignal: signal });
    if (signal.aborted) throw signal.reason;
    if (result.exitCode !== 0) throw new ForksnapError('TOOL_FAILED', `qemu-img ${args[0]} failed (exit ${result.exitCode}): ${String(result.all ?? '').trim().slice(-1500)}`, { command: result.command });
  };
  try {
    await run(['create', '-q', '-f', 'qcow2', '-b', disk.image.path, '-F', disk.image.format, file]);
    await run(['bitmap', '--add', '--enable', '-g', '65536', '-f', 'qcow2', file, name]);
    await run(['rebase', '-q', '-f', 'qcow2', '-b', old.image.path, '-F', old.image.format, file]);
    await run(['rebase', '-q', '-u', '-f', 'qcow2', '-b', disk.image.path, '-F', disk.image.format, file]);
    await run(['bitmap', '--disable', '-f', 'qcow2', file, name]);
    const info = await imageInfo(file, { signal });
    const bitmaps = (info['format-specific']?.data?.bitmaps ?? []) as { name: string }[];
    if (!bitmaps.some((entry) => entry.name === name)) throw new ForksnapError('TOOL_FAILED', `the changed-block bitmap ${name} is missing from ${file}`, { file });
    const map = await execa(qemuImgBinary(), ['map', '--output=json', '-f', 'qcow2', file], { cancelSignal: signal });
    const changedBytes = (JSON.parse(map.stdout) as { length: number; depth: number; data: boolean }[]).filter((entry) => entry.depth === 0).reduce((sum, entry) => sum + entry.length, 0);
    return { file, name, changedBytes, remove: () => rm(dir, { recursive: true, force: true }) };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

function accepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}
