import { execa } from 'execa';
import { readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError, errorMessage, isForksnapError } from '../errors.js';
import { lockVm } from '../jobs/vm-lock.js';
import { qemuImgBinary, qemuImgWithProgress } from './qemu-img.js';
import { describeImage, listSnapshots, loadSnapshot, metaOf, writeMeta, type DiskImage, type SnapshotMeta, type SnapshotView } from './store.js';

/**
 * Incremental storage: a VM's snapshots share unchanged data as a qcow2 chain inside the store.
 *
 * Snapshot N+1's image of a disk becomes a qcow2 whose backing file is snapshot N's image of the
 * same disk, holding only the clusters whose content differs. It is compare-based and needs no
 * dirty bitmap: an empty overlay over the full image just written is rebased (`qemu-img rebase`,
 * safe mode) onto N's image, which copies into the overlay exactly the ranges where the two differ;
 * the overlay then replaces the full image. The backing path in the qcow2 header is relative
 * ("../<N>/<file>"): the store stays relocatable, and the image path of `show --json` opens
 * directly in qemu-img and QEMU (they resolve it next to the image).
 *
 * Raw disks: the increment is a qcow2 over the previous image whatever its format (raw or qcow2);
 * the disk's own format stays in `sourceFormat`, and revert / export convert back to it.
 *
 * Deleting a snapshot merges it into its successor first (deleteWithMerge), then removes its
 * directory. The chain of a VM is changed under one lock (<locks>/_chain-<vm>.lock).
 */
export const MAX_CHAIN_DEPTH = 30;
const LOCK_WAIT_MS = 10 * 60_000;

async function qemuImg(args: string[], signal: AbortSignal): Promise<void> {
  const result = await execa(qemuImgBinary(), args, { reject: false, all: true, cancelSignal: signal, cwd: '/' });
  if (signal.aborted) throw signal.reason;
  if (result.exitCode !== 0) throw new ForksnapError('TOOL_FAILED', `qemu-img ${args[0]} failed (exit ${result.exitCode}): ${String(result.all ?? '').trim().slice(-1500)}`, { command: result.command, exitCode: result.exitCode });
}

/**
 * Take the VM's chain lock (waiting up to 10 min for another holder); returns its release. Held
 * while a VM's snapshot images are rewritten or deleted, and by a job from the moment it writes an
 * increment onto a stored snapshot until its own snapshot is listed (so that base is not deleted
 * under it).
 */
export async function acquireChainLock(paths: Paths, vm: string, owner: string, signal?: AbortSignal): Promise<() => Promise<void>> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      return await lockVm(paths, `_chain-${vm}`, owner);
    } catch (error) {
      if (!isForksnapError(error, 'VM_BUSY') || Date.now() > deadline) throw error;
      if (signal?.aborted) throw signal.reason;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

/** Hold the VM's chain lock while `run` changes its snapshots' images. */
export async function withChainLock<T>(paths: Paths, vm: string, owner: string, run: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  const release = await acquireChainLock(paths, vm, owner, signal);
  try {
    return await run();
  } finally {
    await release();
  }
}

/** How many images `image` depends on (0: self-contained). */
async function chainDepth(paths: Paths, image: DiskImage): Promise<number> {
  let depth = 0;
  let current: DiskImage | undefined = image;
  while (current?.backing && depth <= MAX_CHAIN_DEPTH) {
    depth++;
    const { snapshot, file }: { snapshot: string; file: string } = current.backing;
    current = (await loadSnapshot(paths, snapshot).catch(() => undefined))?.disks.find((disk) => disk.image.file === file)?.image;
  }
  return depth;
}

export interface IncrementalResult {
  readonly disk: string;
  /** The snapshot it is stored on top of, or why it is stored full. */
  readonly base?: string;
  readonly fullReason?: string;
  readonly sizeBefore: number;
  readonly sizeAfter: number;
  readonly durationMs: number;
}

/**
 * Turn the just-committed snapshot `id` into increments over the previous snapshot of the same VM
 * (per disk: same id and virtual size, not failed verification, chain not deeper than
 * MAX_CHAIN_DEPTH). Each disk whose conversion fails stays full (logged); the snapshot is whole
 * either way.
 */
export async function storeIncrementally(paths: Paths, id: string, options: { signal: AbortSignal; log: Logger; full?: string | undefined }): Promise<IncrementalResult[]> {
  const first = await loadSnapshot(paths, id);
  return withChainLock(paths, first.vm, `incremental-${id}`, async () => {
    const view = await loadSnapshot(paths, id);
    // A conversion interrupted by a dead process leaves its temporary overlay: not part of the snapshot.
    for (const name of await readdir(view.dir)) if (/^\..+\.incremental$/.test(name)) await rm(path.join(view.dir, name), { force: true });
    const meta = metaOf(view);
    const results: IncrementalResult[] = [];
    for (const [index, disk] of view.disks.entries()) {
      const started = Date.now();
      const sizeBefore = disk.image.sizeBytes;
      const full = (fullReason: string) => {
        results.push({ disk: disk.id, fullReason, sizeBefore, sizeAfter: sizeBefore, durationMs: Date.now() - started });
        if (!disk.image.backing) meta.disks[index] = { ...meta.disks[index]!, fullReason };
      };
      if (disk.image.backing) {
        results.push({ disk: disk.id, base: disk.image.backing.snapshot, sizeBefore, sizeAfter: sizeBefore, durationMs: 0 });
        continue;
      }
      if (disk.fullReason) {
        results.push({ disk: disk.id, fullReason: disk.fullReason, sizeBefore, sizeAfter: sizeBefore, durationMs: 0 });
        continue;
      }
      if (options.full) {
        full(options.full);
        continue;
      }
      const base = await incrementalBase(paths, view.vm, disk, view.createdAt, id);
      if ('fullReason' in base) {
        full(base.fullReason);
        continue;
      }
      try {
        const image = await rebaseOnto(view, disk.image, base.backing, options.signal);
        meta.disks[index] = { ...meta.disks[index]!, image };
        await writeMeta(view.dir, meta);
        if (image.file !== disk.image.file) await rm(disk.image.path, { force: true });
        results.push({ disk: disk.id, base: base.backing.snapshot, sizeBefore, sizeAfter: image.sizeBytes, durationMs: Date.now() - started });
      } catch (error) {
        if (options.signal.aborted) throw options.signal.reason;
        options.log.error({ snapshot: id, disk: disk.id, base: base.backing.snapshot, err: errorMessage(error) }, 'storing the disk incrementally failed; it stays a full image');
        full(`storing it incrementally failed: ${errorMessage(error).slice(0, 300)}`);
      }
    }
    await writeMeta(view.dir, meta);
    options.log.info({ snapshot: id, disks: results }, 'snapshot stored incrementally where possible');
    return results;
  }, options.signal);
}

/**
 * Rewrite `image` (self-contained, in `view.dir`) as a qcow2 holding only what differs from
 * `backing`, under the name <disk>.qcow2; returns its new description. The old image is left for
 * the caller to remove once meta.json names the new one.
 */
async function rebaseOnto(view: SnapshotView, image: SnapshotView['disks'][number]['image'], backing: NonNullable<DiskImage['backing']>, signal: AbortSignal): Promise<DiskImage> {
  const finalName = `${path.basename(image.file, path.extname(image.file))}.qcow2`;
  await writeIncrementalImage({ file: image.path, format: image.format }, path.join(view.dir, finalName), backing, signal);
  const described = await describeImage(path.join(view.dir, finalName), 'qcow2', signal);
  return { ...described, backing };
}

/**
 * Write `dest` (in a snapshot directory of the store, final or partial) as a qcow2 whose content is
 * `source`'s and whose backing is `backing` (an image of another snapshot, named relatively:
 * "../<snapshot>/<file>"), holding only the ranges where the two differ. `source` is only read; it
 * may be any image qemu-img opens (a finished image, or the child's disk over a live view: the job
 * pipeline can call this in materialise instead of writing a full image). Written under a temporary
 * name and renamed into place.
 */
export async function writeIncrementalImage(source: { file: string; format: string }, dest: string, backing: NonNullable<DiskImage['backing']>, signal: AbortSignal, onProgress?: (percent: number) => void): Promise<void> {
  const temp = path.join(path.dirname(dest), `.${path.basename(dest)}.incremental`);
  const relative = `../${backing.snapshot}/${backing.file}`;
  try {
    await qemuImg(['create', '-q', '-f', 'qcow2', '-b', source.file, '-F', source.format, temp], signal);
    // Safe mode: every range where the old backing (the source) and the new one differ is copied
    // into the overlay; nothing else is written. The relative path is resolved next to the overlay.
    await qemuImgWithProgress(['rebase', '-p', '-f', 'qcow2', '-b', relative, '-F', backing.format, temp], `qemu-img rebase of ${dest} onto ${relative}`, { signal, cwd: '/', ...(onProgress ? { onProgress } : {}) });
    await rename(temp, dest);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/** The image of `diskId` in the VM's latest snapshot before `createdAt` that an increment may be stored on, or why there is none. */
export async function incrementalBase(paths: Paths, vm: string, disk: { id: string; virtualSize: number }, createdAt: string, excluding?: string): Promise<{ backing: NonNullable<DiskImage['backing']> } | { fullReason: string }> {
  const previous = (await listSnapshots(paths, vm)).filter((other) => other.id !== excluding && other.createdAt <= createdAt && other.verification?.verdict !== 'failed').at(-1);
  const base = previous?.disks.find((entry) => entry.id === disk.id);
  if (!previous) return { fullReason: 'no previous snapshot of this VM' };
  if (!base) return { fullReason: `the previous snapshot ${previous.id} has no disk ${disk.id}` };
  if (base.virtualSize !== disk.virtualSize) return { fullReason: `disk size changed since ${previous.id} (${base.virtualSize} -> ${disk.virtualSize} bytes)` };
  if ((await chainDepth(paths, base.image)) + 1 > MAX_CHAIN_DEPTH) return { fullReason: `the chain over ${previous.id} is ${MAX_CHAIN_DEPTH} deep: a full image starts a new one` };
  return { backing: { snapshot: previous.id, file: base.image.file, format: base.image.format } };
}

/**
 * Delete snapshot `id`, merging it into every snapshot stored on top of it first (so each of them
 * stays whole and verifiable), then removing its directory.
 *
 * One successor (the usual chain): `qemu-img commit` writes the successor's own clusters into the
 * doomed image, which then moves into the successor's directory as its image: only the
 * successor's delta is written. At every instant the successor reads the same content (its
 * clusters over a base being overwritten with those same clusters). Several successors: each is
 * rebased (safe mode) onto the doomed image's own backing, or onto nothing.
 */
export async function deleteWithMerge(paths: Paths, id: string, options: { signal?: AbortSignal; log?: Logger } = {}): Promise<{ merged: string[] }> {
  const signal = options.signal ?? AbortSignal.timeout(6 * 3600_000);
  const first = await loadSnapshot(paths, id);
  return withChainLock(paths, first.vm, `delete-${id}`, async () => {
    const doomed = await loadSnapshot(paths, id);
    const all = await listSnapshots(paths);
    const dependents = all.flatMap((successor) => successor.disks.flatMap((disk, index) => (successor.id !== id && disk.image.backing?.snapshot === id ? [{ successor, disk, index }] : [])));
    const merged = new Set<string>();
    for (const { successor, disk, index } of dependents) {
      const own = doomed.disks.find((entry) => entry.image.file === disk.image.backing!.file);
      if (!own) throw new ForksnapError('SNAPSHOT_NOT_FOUND', `snapshot ${successor.id} disk ${disk.id} is stored on ${id}/${disk.image.backing!.file}, which is not in its metadata: not deleting ${id}`, { snapshot: id });
      const onto = own.image.backing;
      const shared = dependents.filter((other) => other.disk.image.backing!.file === own.image.file).length > 1;
      const current = metaOf(await loadSnapshot(paths, successor.id));
      let image: DiskImage;
      if (!shared) {
        await qemuImg(['commit', '-q', '-f', 'qcow2', disk.image.path], signal);
        const moved = path.join(successor.dir, own.image.file);
        await rename(own.image.path, moved);
        image = { ...(await describeImage(moved, own.image.format, signal)), ...(onto ? { backing: onto } : {}) };
      } else {
        await qemuImg(['rebase', '-q', '-f', 'qcow2', ...(onto ? ['-b', `../${onto.snapshot}/${onto.file}`, '-F', onto.format] : ['-b', '']), disk.image.path], signal);
        image = { ...(await describeImage(disk.image.path, 'qcow2', signal)), ...(onto ? { backing: onto } : {}) };
      }
      current.disks[index] = { ...current.disks[index]!, image };
      // A merged image has new bytes: its old verdict no longer describes it.
      const { verification: _old, ...rest } = current;
      await writeMeta(successor.dir, rest as SnapshotMeta);
      if (image.file !== disk.image.file) await rm(disk.image.path, { force: true });
      merged.add(successor.id);
      options.log?.info({ snapshot: id, into: successor.id, disk: disk.id, how: shared ? 'rebase' : 'commit' }, 'snapshot merged into its successor before deletion');
    }
    await rm(doomed.dir, { recursive: true, force: true });
    return { merged: [...merged] };
  }, signal);
}
