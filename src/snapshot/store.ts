import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { snapshotDir, snapshotsDir, type Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { nameSchema, validateName } from '../validate-name.js';

/**
 * The snapshot store: <state>/snapshots/<id>/ holds one self-contained image per disk and
 * meta.json. A snapshot directory is built under a temporary name and renamed into place when
 * complete, so a listed snapshot is always whole.
 */
const diskImageSchema = z.object({
  file: z.string(),
  format: z.enum(['raw', 'qcow2']),
  sizeBytes: z.number(),
  sha256: z.string(),
});

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
  timeToStateMs: z.number(),
  timeToImageMs: z.number(),
  phasesMs: z.record(z.string(), z.number()),
  disks: z.array(z.object({
    id: z.string(),
    source: z.string(),
    sourceFormat: z.string(),
    virtualSize: z.number(),
    backend: z.enum(['reflink', 'qcow2-overlay']),
    image: diskImageSchema,
    crashImage: diskImageSchema.optional(),
  })),
  labels: z.record(z.string(), z.string()).default({}),
  qemu: z.object({ binary: z.string(), version: z.string() }),
  job: z.string(),
});
export type SnapshotMeta = z.infer<typeof snapshotMetaSchema>;

export async function sha256File(file: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { signal })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export async function describeImage(file: string, format: 'raw' | 'qcow2', signal?: AbortSignal): Promise<z.infer<typeof diskImageSchema>> {
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
      await writeFile(path.join(dir, 'meta.json'), `${JSON.stringify(snapshotMetaSchema.parse(meta), null, 2)}\n`);
      await rename(dir, final);
    },
    abort: () => rm(dir, { recursive: true, force: true }),
  };
}

export async function loadSnapshot(paths: Paths, id: string): Promise<SnapshotMeta & { dir: string }> {
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
  return { ...parsed.data, dir };
}

export async function listSnapshots(paths: Paths, vm?: string): Promise<SnapshotMeta[]> {
  let names: string[] = [];
  try {
    names = await readdir(snapshotsDir(paths));
  } catch {
    return [];
  }
  const metas: SnapshotMeta[] = [];
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

export async function deleteSnapshot(paths: Paths, id: string): Promise<void> {
  const meta = await loadSnapshot(paths, id);
  await rm(meta.dir, { recursive: true, force: true });
}

export function snapshotImagePath(meta: SnapshotMeta & { dir: string }, diskId: string): string {
  const disk = meta.disks.find((entry) => entry.id === diskId);
  if (!disk) throw new ForksnapError('SNAPSHOT_NOT_FOUND', `snapshot ${meta.id} has no disk ${diskId}`, { snapshot: meta.id, disk: diskId });
  return path.join(meta.dir, disk.image.file);
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(() => true, () => false);
}
