import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { errorMessage } from '../errors.js';
import { jobRecordSchema, type JobRecord } from './job-record.js';

/**
 * The daemon's job records, one JSON file per job under <state>/daemon/jobs/<job>.json, written
 * atomically (temp file + rename) at each status or phase change. They are the API's view of jobs
 * and survive a restart; the crash-recovery journal (<state>/jobs/, journal.ts) is separate and
 * only lives while a job runs.
 */
export const jobRecordsDir = (paths: Paths) => path.join(paths.stateDir, 'daemon', 'jobs');

export class JobStore {
  readonly #writes = new Map<string, Promise<void>>();

  constructor(private readonly paths: Paths, private readonly log: Logger) {}

  /** Persist the record; writes of one job are serialised so the last one wins. Never throws. */
  save(record: JobRecord): Promise<void> {
    const previous = this.#writes.get(record.id) ?? Promise.resolve();
    const write = previous.then(async () => {
      const dir = jobRecordsDir(this.paths);
      await mkdir(dir, { recursive: true });
      const file = path.join(dir, `${record.id}.json`);
      await writeFile(`${file}.tmp`, `${JSON.stringify(record, null, 2)}\n`);
      await rename(`${file}.tmp`, file);
    }).catch((error: unknown) => {
      this.log.error({ job: record.id, err: errorMessage(error) }, 'could not persist the job record');
    });
    this.#writes.set(record.id, write);
    void write.finally(() => {
      if (this.#writes.get(record.id) === write) this.#writes.delete(record.id);
    });
    return write;
  }

  async loadAll(): Promise<JobRecord[]> {
    const dir = jobRecordsDir(this.paths);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return [];
    }
    const records: JobRecord[] = [];
    for (const name of names) {
      if (!name.endsWith('.json')) continue;
      try {
        records.push(jobRecordSchema.parse(JSON.parse(await readFile(path.join(dir, name), 'utf8'))));
      } catch (error) {
        this.log.warn({ file: name, err: errorMessage(error) }, 'ignoring an unreadable job record');
      }
    }
    return records.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  async remove(id: string): Promise<void> {
    await (this.#writes.get(id) ?? Promise.resolve());
    await rm(path.join(jobRecordsDir(this.paths), `${id}.json`), { force: true });
  }

  /** Wait for every pending write (before exit). */
  async flush(): Promise<void> {
    await Promise.all([...this.#writes.values()]);
  }
}
