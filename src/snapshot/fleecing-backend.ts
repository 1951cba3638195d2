import { chown, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { ForksnapError, errorMessage } from '../errors.js';
import { spaceReserveMiB } from '../jobs/space-preflight.js';
import type { ParentDisk } from '../vm/inspect.js';
import type { DiskBackend, DiskBackendContext, DiskJournal, DiskSnapshot } from './disk-backend.js';
import { snapshotFormat } from './disk-backend.js';
import { addExport, addFleecingNode, armCopyBeforeWrite, DEFAULT_CBW_TIMEOUT_S, detachFilter, dropView, fleecingNames, nbdUri, probeView, startNbdServer } from './fleecing-view.js';
import { convertImage, qemuImgBinary } from './qemu-img.js';
import { freeBytes, watchFreeSpace } from './space.js';
import { writeIncrementalImage } from './incremental.js';

/**
 * Fleecing backend (any filesystem): a copy-before-write point-in-time view served by the parent's
 * own QEMU. The parent never leaves its own image: at the halt a copy-before-write filter is put in
 * front of it (fleecing-view.ts), the data the guest overwrites afterwards is first copied into a
 * fleecing image in the work dir, the child runs on its own overlay over an NBD export of the frozen
 * view, and materialise reads the same view. No merge: finish/discard only drop the view.
 *
 * Guest safety: a failed copy (fleecing filesystem full, I/O error, cbw-timeout) never fails the
 * guest's write (on-cbw-error=break-snapshot); a free-space watch of the fleecing filesystem breaks
 * the snapshot (detaches the filter) before it fills, so a filesystem shared with the parent's own
 * images or the store is never filled by the view. A broken snapshot fails the job (NO_SPACE, or
 * DISK_SNAPSHOT_FAILED for I/O errors and timeouts), detected by probeView after materialise.
 *
 * Not with the precopy strategy: QEMU 7.2 cannot inactivate a graph holding a copy-before-write
 * filter (its target child always takes WRITE), so a precopy migration fails at completion
 * ("bdrv_inactivate_all() failed"). fork and background-snapshot do not inactivate.
 */
export const FLEECING_INCOMPATIBLE_STRATEGIES: readonly string[] = ['precopy'];
const MAX_SOCKET_PATH = 107;

export const fleecingBackend: DiskBackend = {
  name: 'fleecing',
  async prepare(disk: ParentDisk, context: DiskBackendContext, signal: AbortSignal): Promise<DiskSnapshot> {
    const { parent, log: baseLog } = context;
    const log = baseLog.child({ disk: disk.id, backend: 'fleecing' });
    if (!disk.qdev) throw new ForksnapError('DISK_BACKEND_UNSUPPORTED', `disk ${disk.id} is attached to no guest device; the fleecing backend re-points a device`, { disk: disk.id });
    const format = snapshotFormat(disk);
    const names = fleecingNames(context.jobId, disk.id);
    const dir = path.join(context.workDir, 'fleecing');
    const socket = path.join(dir, 'nbd.sock');
    if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) throw new ForksnapError('INVALID_INPUT', `the NBD socket path ${socket} is longer than a UNIX socket allows (${MAX_SOCKET_PATH} bytes); use a shorter state directory`, { socket });
    const fleeceFile = path.join(dir, `${disk.id}.fleece.qcow2`);
    const childOverlay = path.join(context.workDir, `${disk.id}.child.qcow2`);
    const uri = nbdUri(names.exportId, socket);
    const reserveBytes = context.spaceReserveBytes ?? spaceReserveMiB() * 1024 * 1024;
    const device = { qdev: disk.qdev, node: disk.nodeName, filter: names.cbw };
    let journal: DiskJournal = { nodes: [names.access, names.cbw, names.tmp], exports: [names.probeExportId, names.exportId], files: [fleeceFile, childOverlay], devices: [device] };
    const record = async (next: DiskJournal) => {
      journal = next;
      await context.record?.(next);
    };

    await record(journal);
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await qemuImg(['create', '-q', '-f', 'qcow2', fleeceFile, String(disk.virtualSize)], signal);
      await qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', uri, '-F', 'raw', childOverlay, String(disk.virtualSize)], signal);
      if (context.parentOwner) {
        for (const file of [dir, fleeceFile, childOverlay]) await chown(file, context.parentOwner.uid, context.parentOwner.gid);
      }
      await addFleecingNode(parent, { node: names.tmp, file: fleeceFile, backing: disk.nodeName }, signal);
      // Journaled only once started: a server someone else runs must never be stopped by recovery.
      await startNbdServer(parent, socket, log, signal);
      await record({ ...journal, nbdServer: true });
      await addExport(parent, { id: names.exportId, node: names.tmp }, signal);
    } catch (error) {
      await dropView(parent, journal, log, AbortSignal.timeout(30_000)).catch((dropError: unknown) => {
        log.error({ err: errorMessage(dropError) }, 'could not drop the half-prepared fleecing view; recovery retries from the journal');
      });
      if (signal.aborted) throw signal.reason;
      if (error instanceof ForksnapError) throw error;
      throw new ForksnapError('DISK_SNAPSHOT_FAILED', `preparing the fleecing view of ${disk.id} failed: ${errorMessage(error)}`, { disk: disk.id }, { cause: error });
    }
    log.info({ nodes: journal.nodes, export: names.exportId, socket }, 'fleecing view prepared (not frozen yet)');

    let armed = false;
    let brokenWhy: string | undefined;
    let stopWatch: (() => void) | undefined;
    const lowListeners = new Set<(why: string) => void>();
    const breakForSpace = (why: string) => {
      brokenWhy = why;
      // Stop the copies first (the fleecing image stops growing), then tell the job.
      detachFilter(parent, device, log, AbortSignal.timeout(30_000)).then(
        () => log.warn({ why }, 'snapshot broken: copy-before-write detached, the guest writes on undisturbed'),
        (error: unknown) => log.error({ err: errorMessage(error) }, 'could not detach the copy-before-write filter after low space (on-cbw-error=break-snapshot still keeps the guest writing)'),
      ).finally(() => {
        for (const listener of lowListeners) listener(why);
      });
    };
    const stopWatching = () => {
      stopWatch?.();
      stopWatch = undefined;
    };
    const brokenError = async (detail: string): Promise<ForksnapError> => {
      const free = await freeBytes(context.workDir).catch(() => Number.NaN);
      // Without a reserve (0) a full filesystem is still the likely cause: under 4 MiB free counts.
      if (brokenWhy || free < Math.max(reserveBytes, 4 * 1024 * 1024)) {
        return new ForksnapError('NO_SPACE', `the snapshot of ${disk.id} was broken to protect the VM: ${brokenWhy ?? `the fleecing storage ${context.workDir} has ${free} bytes free`}; the guest kept writing`, { disk: disk.id, freeBytes: free, reserveBytes });
      }
      return new ForksnapError('DISK_SNAPSHOT_FAILED', `the fleecing view of ${disk.id} broke: a copy-before-write failed (I/O error on the fleecing storage or cbw-timeout); the guest kept writing (${detail})`, { disk: disk.id, detail });
    };
    const verifyIntact = async (signal: AbortSignal) => {
      if (brokenWhy) throw await brokenError('');
      const probe = await probeView(parent, names, socket, log, signal);
      if (!probe.intact) throw await brokenError(probe.detail);
    };
    const drop = async (signal: AbortSignal) => {
      stopWatching();
      await dropView(parent, journal, log, signal);
      armed = false;
    };

    return {
      backend: 'fleecing',
      disk,
      child: { path: childOverlay, format: 'qcow2' },
      tempFiles: [childOverlay, fleeceFile],
      get journal() {
        return journal;
      },
      async commitAtHalt(signal) {
        try {
          await armCopyBeforeWrite(parent, { cbw: names.cbw, source: disk.nodeName, target: names.tmp, qdev: disk.qdev!, timeoutS: DEFAULT_CBW_TIMEOUT_S }, log, signal);
        } catch (error) {
          if (signal.aborted) throw signal.reason;
          throw new ForksnapError('DISK_SNAPSHOT_FAILED', `arming copy-before-write on ${disk.id} failed: ${errorMessage(error)}`, { disk: disk.id, node: disk.nodeName }, { cause: error });
        }
        armed = true;
        stopWatch = watchFreeSpace({ path: context.workDir, reserveBytes, log, onLow: breakForSpace });
        return {};
      },
      async keepCrashImage() {
        // Nothing to do: the view is frozen at the halt until it is dropped.
      },
      watch(onLow) {
        lowListeners.add(onLow);
        if (brokenWhy) queueMicrotask(() => onLow(brokenWhy!));
        return () => lowListeners.delete(onLow);
      },
      async materialise(dest, signal, onProgress) {
        if (!armed) throw new ForksnapError('INTERNAL', `materialise of ${disk.id} before the view was frozen`, { disk: disk.id });
        // Probed before (a view broken already is not worth copying) and after (a copy that failed
        // while converting makes what was read suspect).
        await verifyIntact(signal);
        await convertImage({ file: childOverlay, format: 'qcow2' }, { file: dest, format }, { signal, onProgress });
        await verifyIntact(signal);
      },
      async materialiseOnto(dest, backing, signal, onProgress) {
        if (!armed) throw new ForksnapError('INTERNAL', `materialise of ${disk.id} before the view was frozen`, { disk: disk.id });
        await verifyIntact(signal);
        await writeIncrementalImage({ file: childOverlay, format: 'qcow2' }, dest, backing, signal, onProgress);
        await verifyIntact(signal);
      },
      async materialiseCrashImage(dest, signal, onProgress) {
        await verifyIntact(signal);
        await convertImage({ file: uri, format: 'raw' }, { file: dest, format }, { signal, onProgress });
        await verifyIntact(signal);
      },
      async finish(signal, onProgress) {
        await drop(signal);
        onProgress(100);
      },
      async discard() {
        await drop(AbortSignal.timeout(60_000));
      },
    };
  },
};

async function qemuImg(args: string[], signal: AbortSignal): Promise<void> {
  const result = await execa(qemuImgBinary(), args, { reject: false, cancelSignal: signal, all: true });
  if (signal.aborted) throw signal.reason;
  if (result.exitCode !== 0) throw new ForksnapError('TOOL_FAILED', `qemu-img ${args[0]} failed (exit ${result.exitCode}): ${String(result.all ?? '').trim().slice(-2000)}`, { command: result.command, exitCode: result.exitCode });
}
