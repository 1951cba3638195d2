import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { snapshotDir, snapshotsDir, type Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { nameSchema, validateName } from '../validate-name.js';
import { deleteWithMerge } from './incremental.js';

/**
 * The snapshot store: <state>/snapshots/<id>/ holds one self-contained image per disk and
 * meta.json. A snapshot directory is built under a temporary name and renamed into place when
 * complete, so a listed snapshot is always whole.
 *
 * meta.json names each image by its file name only (the store stays relocatable: move the state
 * directory and every snapshot still loads). What forksnap shows programs (the CLI's --json, the
 * HTTP API, WebSocket events) is the snapshot *view*: meta.json plus `schemaVersion`, the snapshot's
 * absolute `dir` and each image's absolute `path`, computed where the store is now.
 */
const diskImageSchema = z.object({
  file: z.string(),
  format: z.enum(['raw', 'qcow2']),
  sizeBytes: z.number(),
  sha256: z.string(),
  /**
   * Incremental storage: the image is a qcow2 holding only what differs from this image of another
   * snapshot of the same VM and disk (its backing file, stored in the qcow2 header as the relative
   * path "../<snapshot>/<file>", so the store stays relocatable). Absent: self-contained.
   */
  backing: z.object({ snapshot: z.string(), file: z.string(), format: z.enum(['raw', 'qcow2']) }).optional(),
});

/** One check of `forksnap snapshot verify` (src/snapshot/verify.ts). */
export const verificationCheckSchema = z.object({
  disk: z.string(),
  check: z.enum(['sha256', 'qemu-img-check', 'filesystem']),
  /** What was checked: the image file, "whole disk" or "partition N". */
  target: z.string(),
  status: z.enum(['passed', 'failed', 'not-checked']),
  detail: z.string(),
  /** filesystem checks: the type found (ext4, xfs, ...), if any. */
  filesystem: z.string().optional(),
});
export const verificationSchema = z.object({
  /** passed only when no check failed ("not-checked" filesystems do not fail it). */
  verdict: z.enum(['passed', 'failed']),
  at: z.string(),
  durationMs: z.number(),
  checks: z.array(verificationCheckSchema),
});
export type VerificationCheck = z.infer<typeof verificationCheckSchema>;
export type Verification = z.infer<typeof verificationSchema>;

export const snapshotMetaSchema = z.object({
  version: z.literal(1),
  id: nameSchema,
  vm: z.string(),
  createdAt: z.string(),
  strategy: z.string(),
  /** Set when the requested strategy failed before any state was copied and another one took over. */
  strategyFallback: z.object({ from: z.string(), reason: z.string() }).optional(),
  consistency: z.enum(['clean', 'crash-consistent']),
  consistencyReason: z.string(),
  parentDowntimeMs: z.number(),
  /**
   * Where the downtime went (fork, background-snapshot; src/forker/downtime-parts.ts): forksnap's
   * own share (disk views at the halt, the ordering round trip before cont) and QEMU's.
   */
  parentDowntimeParts: z.object({
    haltMs: z.number().optional(),
    diskViewMs: z.number(),
    migrateCommandMs: z.number(),
    snapshotPointMs: z.number().optional(),
    resumeCommandMs: z.number().optional(),
    resumeMs: z.number(),
    forksnapMs: z.number(),
    qemuMs: z.number(),
  }).optional(),
  /** The parent QEMU's page tables (VmPTE, what fork() copies) and resident memory just before the halt, from /proc. */
  parentMemory: z.object({
    vmPteBytes: z.number().optional(),
    vmRssBytes: z.number().optional(),
    /** fork: guest RAM mapped by transparent huge pages at the halt, and what the collapse before it did (src/qemu/collapse-guest-ram.ts). */
    anonHugeBytes: z.number().optional(),
    collapse: z.object({ beforeBytes: z.number(), afterBytes: z.number(), ms: z.number(), failedBytes: z.number() }).optional(),
  }).optional(),
  timeToStateMs: z.number(),
  /** From the halt to the child's first instruction (its `cont`, after the isolation). */
  timeToChildRunMs: z.number().optional(),
  /** fork-postcopy: what the parent's snapshot process served the child (src/forker/postcopy-tail.ts). */
  postcopy: z.object({
    requests: z.number(),
    transferredBytes: z.number(),
    unsentBytes: z.number(),
    totalBytes: z.number(),
    ended: z.string().optional(),
    backgroundPush: z.union([z.enum(['on', 'off']), z.number()]),
  }).optional(),
  timeToImageMs: z.number(),
  phasesMs: z.record(z.string(), z.number()),
  disks: z.array(z.object({
    id: z.string(),
    source: z.string(),
    sourceFormat: z.string(),
    virtualSize: z.number(),
    /** 'fleecing' is the backend that replaces qcow2-overlay (which old snapshots name). */
    backend: z.enum(['reflink', 'qcow2-overlay', 'fleecing']),
    image: diskImageSchema,
    crashImage: diskImageSchema.optional(),
    /** Why this disk's image is stored full rather than as an increment (incremental.ts); absent for increments and older snapshots. */
    fullReason: z.string().optional(),
  })),
  labels: z.record(z.string(), z.string()).default({}),
  qemu: z.object({ binary: z.string(), version: z.string() }),
  job: z.string(),
  /** The last `forksnap snapshot verify` of this snapshot (or the job's own, with `verify`). */
  verification: verificationSchema.optional(),
});
export type SnapshotMeta = z.infer<typeof snapshotMetaSchema>;
export type DiskImage = z.infer<typeof diskImageSchema>;

/**
 * Version of the JSON contract of a snapshot as programs see it (README "JSON results"): fields
 * may be added within a version; a field is never removed, renamed or given another meaning
 * without a new version.
 */
export const SNAPSHOT_SCHEMA_VERSION = 1;

const imageViewSchema = diskImageSchema.extend({
  /** Absolute path of the image file (qemu-img and QEMU open it directly, backing chain included). */
  path: z.string(),
  /** Incremental images: absolute path of the backing image (inside the store). */
  backingPath: z.string().optional(),
});
export const snapshotViewSchema = snapshotMetaSchema.extend({
  schemaVersion: z.literal(SNAPSHOT_SCHEMA_VERSION),
  /** Absolute path of the snapshot's directory in the store. */
  dir: z.string(),
  disks: z.array(snapshotMetaSchema.shape.disks.element.extend({ image: imageViewSchema, crashImage: imageViewSchema.optional() })),
  /** The snapshot's own size on disk (allocated bytes of its directory; an incremental image counts only its own clusters). */
  sizeOnDiskBytes: z.number().optional(),
});
export type ImageView = z.infer<typeof imageViewSchema>;
export type SnapshotView = z.infer<typeof snapshotViewSchema>;

function imageView(image: DiskImage, dir: string): ImageView {
  return { ...image, path: path.resolve(dir, image.file), ...(image.backing ? { backingPath: path.resolve(dir, '..', image.backing.snapshot, image.backing.file) } : {}) };
}

/** The allocated sizes of a view's files, read now (what `list --json` reports as each snapshot's own size). */
async function withSizes(view: SnapshotView): Promise<SnapshotView> {
  const allocated = async (file: string) => stat(file).then((info) => info.blocks * 512, () => 0);
  let total = 0;
  for (const name of await readdir(view.dir).catch(() => [] as string[])) total += await allocated(path.join(view.dir, name));
  return { ...view, sizeOnDiskBytes: total };
}

/** The snapshot as programs see it: absolute paths computed from where its directory is now. */
export function toSnapshotView(meta: SnapshotMeta, dir: string): SnapshotView {
  const stored = snapshotMetaSchema.parse(meta);
  const absolute = path.resolve(dir);
  return {
    schemaVersion: SNAPSHOT_SCHEMA_VERSION,
    ...stored,
    dir: absolute,
    disks: stored.disks.map(({ image, crashImage, ...disk }) => ({ ...disk, image: imageView(image, absolute), ...(crashImage ? { crashImage: imageView(crashImage, absolute) } : {}) })),
  };
}

export async function sha256File(file: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { signal })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export async function describeImage(file: string, format: 'raw' | 'qcow2', signal?: AbortSignal): Promise<DiskImage> {
  const [info, sha256] = await Promise.all([stat(file), sha256File(file, signal)]);
  return { file: path.basename(file), format, sizeBytes: info.size, sha256 };
}

/** A directory to build a snapshot in; `commit` moves it into the store. */
export async function beginSnapshot(paths: Paths, id: string): Promise<{ dir: string; commit: (meta: SnapshotMeta) => Promise<void>; abort: () => Promise<void> }> {
  validateName('snapshot', id);
  const final = snapshotDir(paths, id);
  if (await exists(final)) throw new ForksnapError('SNAPSHOT_EXISTS', `a snapshot named "${id}" exists already`, { snapshot: id });
  const dir = path.join(snapshotsDir(paths), `.partial-${id}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  return {
    dir,
    commit: async (meta) => {
      await writeMeta(dir, meta);
      await rename(dir, final);
    },
    abort: () => rm(dir, { recursive: true, force: true }),
  };
}

/**
 * Write meta.json atomically (a temporary file renamed over it): a reader sees the old or the new
 * one, never half of one. Parsing strips what a view adds (schemaVersion, dir, path): meta.json
 * stays relocatable.
 */
export async function writeMeta(dir: string, meta: SnapshotMeta): Promise<void> {
  const temp = path.join(dir, '.meta.json.tmp');
  await writeFile(temp, `${JSON.stringify(snapshotMetaSchema.parse(meta), null, 2)}\n`);
  await rename(temp, path.join(dir, 'meta.json'));
}

/** Record a verification verdict in a stored snapshot's meta.json; returns the new view. */
export async function recordVerification(paths: Paths, id: string, verification: Verification): Promise<SnapshotView> {
  const view = await loadSnapshot(paths, id);
  const meta = { ...metaOf(view), verification };
  await writeMeta(view.dir, meta);
  return toSnapshotView(meta, view.dir);
}

/** The stored metadata of a view (what meta.json holds). */
export function metaOf(view: SnapshotView): SnapshotMeta {
  const { schemaVersion: _version, dir: _dir, ...rest } = view;
  return snapshotMetaSchema.parse({ ...rest, disks: view.disks.map(({ image, crashImage, ...disk }) => ({ ...disk, image: stripPath(image), ...(crashImage ? { crashImage: stripPath(crashImage) } : {}) })) });
}

function stripPath(image: ImageView): DiskImage {
  const { path: _path, ...rest } = image;
  return rest;
}

export async function loadSnapshot(paths: Paths, id: string): Promise<SnapshotView> {
  const dir = snapshotDir(paths, validateName('snapshot', id));
  let text: string;
  try {
    text = await readFile(path.join(dir, 'meta.json'), 'utf8');
  } catch {
    throw new ForksnapError('SNAPSHOT_NOT_FOUND', `no snapshot named "${id}" (see \`forksnap snapshot list\`)`, { snapshot: id });
  }
  const parsed = (() => {
    try {
      return snapshotMetaSchema.safeParse(JSON.parse(text));
    } catch (error) {
      return { success: false as const, error };
    }
  })();
  if (!parsed.success) throw new ForksnapError('SNAPSHOT_NOT_FOUND', `snapshot "${id}" has an unreadable meta.json (${dir}/meta.json): ${String(parsed.error).slice(0, 300)}`, { snapshot: id });
  return withSizes(toSnapshotView(parsed.data, dir));
}

export async function listSnapshots(paths: Paths, vm?: string): Promise<SnapshotView[]> {
  let names: string[] = [];
  try {
    names = await readdir(snapshotsDir(paths));
  } catch {
    return [];
  }
  const metas: SnapshotView[] = [];
  for (const name of names) {
    if (name.startsWith('.')) continue;
    try {
      const meta = await loadSnapshot(paths, name);
      if (!vm || meta.vm === vm) metas.push(meta);
    } catch {
      // not a snapshot directory
    }
  }
  return metas.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

/**
 * Delete a snapshot. A snapshot that others are stored on top of (incremental storage) is merged
 * into them first, so every other snapshot stays whole (incremental.ts).
 */
export async function deleteSnapshot(paths: Paths, id: string, options: { signal?: AbortSignal } = {}): Promise<void> {
  await deleteWithMerge(paths, id, options);
}

export function snapshotImagePath(meta: SnapshotMeta & { dir: string }, diskId: string): string {
  const disk = meta.disks.find((entry) => entry.id === diskId);
  if (!disk) throw new ForksnapError('SNAPSHOT_NOT_FOUND', `snapshot ${meta.id} has no disk ${diskId}`, { snapshot: meta.id, disk: diskId });
  return path.resolve(meta.dir, disk.image.file);
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(() => true, () => false);
}
