import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { Paths } from '../config.js';

/**
 * A persisted record of what a running job has changed, written before each change takes effect,
 * so that a job whose process died (SIGKILL, power loss) can be unwound by whoever comes next: the
 * daemon at start-up, or the next job on the same VM when it takes over the stale lock.
 * <state>/jobs/<job>.json; removed when the job's own clean-up finished.
 */
export const journalSchema = z.object({
  job: z.string(),
  vm: z.string(),
  pid: z.number(),
  startedAt: z.string(),
  phase: z.string(),
  parentSocket: z.string(),
  /** The parent may be paused by this job from `halted: true` until it is seen running again. */
  halted: z.boolean(),
  workDir: z.string().optional(),
  childPid: z.number().optional(),
  childArgv0: z.string().optional(),
  /** Files to delete when unwinding. */
  tempFiles: z.array(z.string()),
  /** Parent disks moved onto a temporary overlay: merge back with an active commit. */
  overlays: z.array(z.object({ disk: z.string(), overlayNode: z.string(), baseNode: z.string(), overlayFile: z.string(), baseFile: z.string() })),
  partialSnapshotDir: z.string().optional(),
});
export type JournalEntry = z.infer<typeof journalSchema>;

export const journalDir = (paths: Paths) => path.join(paths.stateDir, 'jobs');

export class JobJournal {
  #entry: JournalEntry;
  #writing: Promise<void> = Promise.resolve();

  constructor(private readonly paths: Paths, entry: Omit<JournalEntry, 'pid' | 'startedAt' | 'halted' | 'tempFiles' | 'overlays' | 'phase'>) {
    this.#entry = { ...entry, pid: process.pid, startedAt: new Date().toISOString(), phase: 'preflight', halted: false, tempFiles: [], overlays: [] };
  }

  get entry(): JournalEntry {
    return this.#entry;
  }

  /** Apply a change and persist it (atomically: write a temp file and rename). */
  async update(change: (entry: JournalEntry) => Partial<JournalEntry>): Promise<void> {
    this.#entry = { ...this.#entry, ...change(this.#entry) };
    const snapshot = this.#entry;
    this.#writing = this.#writing.then(async () => {
      const dir = journalDir(this.paths);
      await mkdir(dir, { recursive: true });
      const file = path.join(dir, `${snapshot.job}.json`);
      await writeFile(`${file}.tmp`, JSON.stringify(snapshot, null, 2));
      await rename(`${file}.tmp`, file);
    });
    await this.#writing;
  }

  async remove(): Promise<void> {
    await this.#writing.catch(() => {});
    await rm(path.join(journalDir(this.paths), `${this.#entry.job}.json`), { force: true });
  }
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
      // a torn write of a dead job: nothing usable
    }
  }
  return entries;
}
