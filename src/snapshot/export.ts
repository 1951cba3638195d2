import { execa } from 'execa';
import { connect } from 'node:net';
import { rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError, errorMessage } from '../errors.js';
import { convertImage, imageInfo } from './qemu-img.js';
import { loadSnapshot, type SnapshotView } from './store.js';

/**
 * `forksnap snapshot export`: one disk of a stored snapshot, out of the store.
 *
 *   --to FILE [--format qcow2|raw]   a self-contained copy (`qemu-img convert`: an incremental
 *                                    image's backing chain is flattened into it), written under a
 *                                    temporary name and renamed into place when complete
 *   --nbd SOCKET                     the disk served read-only over NBD on a UNIX socket, export
 *                                    name DISK (qemu-nbd from qemu-utils), until the signal aborts
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
  /** Resolves when the server has stopped (after the signal aborted, or if it died). */
  readonly done: Promise<void>;
}

const READY_TIMEOUT_MS = 20_000;

/**
 * Serve a disk of a snapshot read-only over NBD until `signal` aborts; resolves once the socket
 * accepts connections. The socket is removed when the server stops.
 */
export async function serveNbd(paths: Paths, id: string, diskId: string, socket: string, options: { signal: AbortSignal; log: Logger }): Promise<NbdExport> {
  const snapshot = await loadSnapshot(paths, id);
  const disk = diskOf(snapshot, diskId);
  const socketPath = path.resolve(socket);
  if (await stat(socketPath).then(() => true, () => false)) throw new ForksnapError('INVALID_INPUT', `${socketPath} exists already (another server, or a stale socket: remove it first)`, { socket: socketPath });
  // --shared=0: any number of clients; --persistent: keep serving after a client leaves.
  const args = ['--read-only', '--persistent', '--shared=0', '--socket', socketPath, '--export-name', diskId, '--format', disk.image.format, disk.image.path];
  const server = execa(qemuNbdBinary(), args, { reject: false, all: true, stdin: 'ignore', cancelSignal: options.signal, killSignal: 'SIGTERM', forceKillAfterDelay: 5000 });
  const done = server.then(async (result) => {
    await rm(socketPath, { force: true });
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
  return { snapshot: id, disk: diskId, socket: socketPath, exportName: diskId, uri: `nbd+unix:///${encodeURIComponent(diskId)}?socket=${socketPath}`, done };
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
