import { mkdir, open, readFile, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { Paths } from '../config.js';
import { processIdentity } from '../qemu/process-info.js';

/**
 * A persisted record of what a running job has changed, written before each change takes effect,
 * so that a job whose process died (SIGKILL, OOM, power loss) can be unwound by whoever comes next:
 * its supervisor (src/supervisor/), the daemon at start-up, or the next job on the same VM. Recovery
 * (recover-job.ts) does only what the journal says forksnap did: it is the only truth.
 * <state>/jobs/<job>.json; removed when the job's own clean-up finished.
 *
 * Durability: every update is written to a temporary file, fsynced, renamed over the journal and
 * the directory fsynced, so after a host crash the journal is either the old or the new version.
 * A write that fails (ENOSPC, EIO) rejects that update only: the next update writes the whole
 * entry again, including the change whose write failed.
 */
const identity = z.object({ pid: z.number(), startTime: z.number(), bootId: z.string() });

/** What one disk backend added to the parent QEMU and the filesystem (TEAM.md interface 5). */
const diskAdditions = z.object({
  disk: z.string(),
  backend: z.string(),
  /** Block nodes added to the parent (blockdev-add), in the order to delete them. */
  nodes: z.array(z.string()).optional(),
  /** Block job ids started in the parent. */
  jobs: z.array(z.string()).optional(),
  /** Block export ids added to the parent. */
  exports: z.array(z.string()).optional(),
  /** True if this job started the parent's NBD server (it was not running before). */
  nbdServer: z.boolean().optional(),
  /** Guest devices re-pointed at a filter node (copy-before-write): put back on `node` while their root is `filter`. */
  devices: z.array(z.object({ qdev: z.string(), node: z.string(), filter: z.string() })).optional(),
  /** Files created (fleecing images, clones), deleted when unwinding if nothing holds them open. */
  files: z.array(z.string()),
});
export type DiskAdditions = z.infer<typeof diskAdditions>;

export const migrationSettingsSchema = z.object({
  capabilities: z.record(z.string(), z.boolean()),
  parameters: z.record(z.string(), z.unknown()),
});

export const journalSchema = z.object({
  version: z.number().optional(),
  job: z.string(),
  vm: z.string(),
  /** The job's process (owner); `owner` adds its start time and boot, so a reused pid is not taken for it. */
  pid: z.number(),
  owner: identity.optional(),
  /** The supervisor watching the owner (src/supervisor/): recovery leaves the journal to it while it runs. */
  supervisor: identity.optional(),
  startedAt: z.string(),
  phase: z.string(),
  parentSocket: z.string(),
  /** The parent QEMU this job worked on: after a restart of the VM (another pid) nothing is done to the new one. */
  parent: identity.optional(),
  strategy: z.string().optional(),
  /** The parent's QEMU version, major.minor.micro (background-snapshot before 8.1 leaves RAM write-protected when its channel breaks). */
  qemuVersion: z.string().optional(),
  /** Set before this job sends `stop`: the parent may be paused by this job until it is seen running again. */
  halted: z.boolean(),
  haltedAt: z.string().optional(),
  /** Set before this job sends `migrate`: a migration in flight is this job's to cancel. Cleared once it is over. */
  migrationStarted: z.boolean().optional(),
  /** The user's migration capabilities and parameters, journaled before the job changes any. */
  migrationSettings: migrationSettingsSchema.optional(),
  workDir: z.string().optional(),
  childPid: z.number().optional(),
  childArgv0: z.string().optional(),
  /** The child QEMU: killed when unwinding only if pid AND start time still match. */
  child: identity.optional(),
  /** What disk backends added, per disk. */
  disks: z.array(diskAdditions).optional(),
  /** Files to delete when unwinding (if provably ours and held open by no process). */
  tempFiles: z.array(z.string()),
  /** Legacy (qcow2-overlay backend before fleecing): parent disks moved onto a temporary overlay. */
  overlays: z.array(z.object({ disk: z.string(), overlayNode: z.string(), baseNode: z.string(), overlayFile: z.string(), baseFile: z.string() })),
  partialSnapshotDir: z.string().optional(),
});
export type JournalEntry = z.infer<typeof journalSchema>;
export type JournalIdentity = z.infer<typeof identity>;

export const JOURNAL_VERSION = 2;

export const journalDir = (paths: Paths) => path.join(paths.stateDir, 'jobs');
export const journalFile = (paths: Paths, job: string) => path.join(journalDir(paths), `${job}.json`);

type JournalInit = Omit<JournalEntry, 'pid' | 'startedAt' | 'halted' | 'tempFiles' | 'overlays' | 'phase'> & Partial<Pick<JournalEntry, 'phase'>>;

export class JobJournal {
  #entry: JournalEntry;
  /** The write queue; never rejects (each update's own promise carries its failure). */
  #writing: Promise<void> = Promise.resolve();

  constructor(private readonly paths: Paths, entry: JournalInit) {
    this.#entry = { version: JOURNAL_VERSION, pid: process.pid, startedAt: new Date().toISOString(), phase: 'preflight', halted: false, tempFiles: [], overlays: [], ...entry };
  }

  get entry(): JournalEntry {
    return this.#entry;
  }

  get file(): string {
    return journalFile(this.paths, this.#entry.job);
  }

  /**
   * Apply a change and persist it durably before resolving. The change is kept in memory even if
   * the write fails, so the next successful update persists it too; the caller must not go on
   * with the change the failed update was to record.
   */
  async update(change: (entry: JournalEntry) => Partial<JournalEntry>): Promise<void> {
    this.#entry = { ...this.#entry, ...change(this.#entry) };
    const written = this.#writing.then(() => this.#persist());
    this.#writing = written.then(
      () => undefined,
      () => undefined, // the failure is the caller's (it awaits `written`); the queue goes on
    );
    await written;
  }

  /** Append what a disk backend added (replacing an earlier record of the same disk). */
  async recordDisk(additions: DiskAdditions): Promise<void> {
    await this.update((entry) => ({ disks: [...(entry.disks ?? []).filter((d) => d.disk !== additions.disk), additions] }));
  }

  async remove(): Promise<void> {
    await this.#writing;
    await rm(this.file, { force: true });
    await fsyncDir(journalDir(this.paths)).catch(() => undefined); // the directory may be gone with the state dir
  }

  async #persist(): Promise<void> {
    if (!this.#entry.owner) this.#entry = { ...this.#entry, owner: await processIdentity(process.pid) };
    const snapshot = this.#entry;
    const dir = journalDir(this.paths);
    await mkdir(dir, { recursive: true });
    const file = this.file;
    const tmp = `${file}.tmp`;
    try {
      const handle = await open(tmp, 'w', 0o600);
      try {
        await handle.writeFile(JSON.stringify(snapshot, null, 2));
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(tmp, file);
    } catch (error) {
      await rm(tmp, { force: true }).catch(() => undefined); // best effort: the next write replaces it anyway
      throw error;
    }
    await fsyncDir(dir);
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export async function readJournal(paths: Paths, job: string): Promise<JournalEntry | undefined> {
  let text: string;
  try {
    text = await readFile(journalFile(paths, job), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  return journalSchema.parse(JSON.parse(text));
}

export async function readJournals(paths: Paths): Promise<JournalEntry[]> {
  let names: string[] = [];
  try {
    names = await readdir(journalDir(paths));
  } catch {
    return [];
  }
  const entries: JournalEntry[] = [];
  for (const name of names.filter((n) => n.endsWith('.json'))) {
    try {
      entries.push(journalSchema.parse(JSON.parse(await readFile(path.join(journalDir(paths), name), 'utf8'))));
    } catch {
      // a torn write of a dead job (journals before fsync): nothing usable
    }
  }
  return entries;
}

/** Remove a journal once it has been unwound. */
export async function removeJournal(paths: Paths, job: string): Promise<void> {
  await rm(journalFile(paths, job), { force: true });
  await fsyncDir(journalDir(paths)).catch(() => undefined); // gone with the directory: nothing to sync
}
