import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError, errorMessage } from '../errors.js';
import { NO_HOOKS, type HookSet } from '../hooks/hook-spec.js';
import { withDeadline } from '../util/abort.js';
import { JobEventStream, type JobEvent } from './events.js';
import { applyJobEvent, isFinished, newJobRecord, type JobRecord, type JobRequest, type JobStatus, type JobTrigger } from './job-record.js';
import { JobStore } from './job-store.js';
import { recoverInterruptedJobs } from './recover-job.js';
import { supervisorLogFile } from '../supervisor/start-supervisor.js';
import { checkJobRequest, runJob, type RunJobOptions, type SnapshotResult } from './run-job.js';
import { newJobId } from './snapshot-job.js';

export interface JobEngineOptions {
  readonly paths: Paths;
  readonly log: Logger;
  /** Jobs running at once, on different VMs (one job per VM at a time, always). */
  readonly maxConcurrent: number;
  /** Finished job records kept (in memory and on disk). */
  readonly historyLimit?: number;
  readonly hooksFor?: (vm: string) => HookSet;
  /** The job body; tests may replace it, the daemon never does. */
  readonly run?: (options: RunJobOptions) => Promise<SnapshotResult>;
}

const EVENT_HISTORY_JOBS = 20;

interface Entry {
  record: JobRecord;
  events?: JobEventStream;
  controller?: AbortController;
  done?: Promise<void>;
}

export type JobListener = (event: JobEvent, record: JobRecord) => void;
export type FinishedListener = (record: JobRecord, result: SnapshotResult | undefined) => void;

/**
 * The daemon's job engine: a FIFO queue, at most one job per VM and `maxConcurrent` jobs in all,
 * cancellation through an AbortController per job, and persisted job records. At start it unwinds
 * jobs a killed daemon left behind (recover-job.ts) and marks their records failed with the reason.
 */
export class JobEngine {
  readonly #jobs = new Map<string, Entry>();
  readonly #queue: string[] = [];
  readonly #runningVms = new Set<string>();
  readonly #listeners = new Set<JobListener>();
  readonly #finishedListeners = new Set<FinishedListener>();
  readonly #store: JobStore;
  readonly #log: Logger;
  #accepting = true;

  constructor(private readonly options: JobEngineOptions) {
    this.#log = options.log.child({ component: 'job-engine' });
    this.#store = new JobStore(options.paths, this.#log);
  }

  get accepting(): boolean {
    return this.#accepting;
  }

  /** Load job records and unwind what a killed daemon left: returns the jobs marked failed. */
  async start(): Promise<JobRecord[]> {
    const records = await this.#store.loadAll();
    const recovered = await recoverInterruptedJobs(this.options.paths, this.#log);
    const interrupted: JobRecord[] = [];
    for (const record of records) {
      if (!isFinished(record.status)) {
        const undone = recovered.find((entry) => entry.job === record.id);
        const where = record.status === 'queued' ? 'while it was queued' : `during phase ${record.phase ?? 'start-up'}`;
        // Normally the job's supervisor unwound it within milliseconds of the crash: say what it did.
        const bySupervisor = await supervisorActions(this.options.paths, record.id);
        const actions = [
          ...(bySupervisor.length ? [`its supervisor unwound it: ${bySupervisor.join('; ')}`] : []),
          ...(undone ? [...undone.actions, ...undone.failures.map((failure) => `FAILED: ${failure}`)] : []),
        ];
        const failed: JobRecord = {
          ...record,
          status: 'failed',
          finishedAt: new Date().toISOString(),
          progress: undefined,
          error: { code: 'DAEMON_INTERRUPTED', message: `the daemon stopped (killed or crashed) ${where}; on restart: ${actions.join('; ') || 'nothing needed undoing'}`, ...(record.phase ? { phase: record.phase } : {}) },
        };
        await this.#store.save(failed);
        this.#log.warn({ job: record.id, vm: record.vm, actions }, 'job interrupted by a daemon stop marked failed');
        interrupted.push(failed);
        this.#jobs.set(record.id, { record: failed });
      } else {
        this.#jobs.set(record.id, { record });
      }
    }
    await this.#prune();
    return interrupted;
  }

  onEvent(listener: JobListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  onFinished(listener: FinishedListener): () => void {
    this.#finishedListeners.add(listener);
    return () => this.#finishedListeners.delete(listener);
  }

  /** Queue a job (after validating what can be checked now); it starts when its VM and a slot are free. */
  async submit(request: JobRequest, origin: { trigger: JobTrigger; schedule?: string } = { trigger: 'api' }): Promise<JobRecord> {
    if (!this.#accepting) throw new ForksnapError('DAEMON_SHUTTING_DOWN', 'the daemon is shutting down and accepts no new jobs; retry when it is back', {});
    await checkJobRequest(this.options.paths, request);
    const pending = [...this.#jobs.values()].some((entry) => !isFinished(entry.record.status) && request.snapshotId !== undefined && entry.record.request.snapshotId === request.snapshotId);
    if (pending) throw new ForksnapError('SNAPSHOT_EXISTS', `a snapshot named "${request.snapshotId}" is being made by another job; choose another name`, { snapshot: request.snapshotId });
    if (!this.#accepting) throw new ForksnapError('DAEMON_SHUTTING_DOWN', 'the daemon is shutting down and accepts no new jobs; retry when it is back', {});
    const id = newJobId();
    const entry: Entry = { record: newJobRecord(id, request, origin.trigger, origin.schedule), events: new JobEventStream(id), controller: new AbortController() };
    this.#jobs.set(id, entry);
    entry.events!.subscribe((event) => this.#fold(entry, event));
    this.#queue.push(id);
    const startsNow = this.#canStart(entry.record.vm) && this.#queue[0] === id;
    entry.events!.emit({ type: 'job-accepted', vm: request.vm, queuePosition: startsNow ? 0 : this.#queue.length, trigger: origin.trigger });
    this.#log.info({ job: id, vm: request.vm, trigger: origin.trigger, schedule: origin.schedule }, 'job accepted');
    this.#pump();
    return entry.record;
  }

  cancel(id: string, reason = 'cancelled through the API'): JobRecord {
    const entry = this.#entry(id);
    if (isFinished(entry.record.status)) throw new ForksnapError('JOB_FINISHED', `job ${id} has already ${entry.record.status === 'succeeded' ? 'succeeded' : 'ended'} (${entry.record.status}); nothing to cancel`, { job: id, status: entry.record.status });
    const queued = this.#queue.indexOf(id);
    if (queued >= 0) {
      this.#queue.splice(queued, 1);
      entry.events!.emit({ type: 'job-failed', code: 'CANCELLED', message: `${reason} (the job had not started)` });
    } else {
      entry.controller!.abort(new ForksnapError('CANCELLED', reason, { job: id }));
    }
    this.#log.info({ job: id, vm: entry.record.vm, reason }, 'job cancel requested');
    return entry.record;
  }

  get(id: string): JobRecord {
    return this.#entry(id).record;
  }

  /** Past events of a job still in memory (jobs of this daemon run), oldest first. */
  history(id: string): readonly JobEvent[] {
    return this.#entry(id).events?.history ?? [];
  }

  list(filter: { vm?: string | undefined; status?: JobStatus | undefined } = {}): JobRecord[] {
    return [...this.#jobs.values()].map((entry) => entry.record)
      .filter((record) => (!filter.vm || record.vm === filter.vm) && (!filter.status || record.status === filter.status))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  active(): JobRecord[] {
    return this.list().filter((record) => !isFinished(record.status));
  }

  activeOn(vm: string): JobRecord | undefined {
    return this.active().find((record) => record.vm === vm);
  }

  /**
   * Stop accepting; cancel queued jobs; give running ones `graceMs` to finish, then cancel them
   * (their undo resumes the parent, merges overlays, kills the child, removes temporary files).
   */
  async shutdown(graceMs: number): Promise<void> {
    this.#accepting = false;
    for (const id of [...this.#queue]) this.cancel(id, 'the daemon is shutting down');
    const running = [...this.#jobs.values()].filter((entry) => entry.done && !isFinished(entry.record.status));
    const all = Promise.allSettled(running.map((entry) => entry.done));
    if (running.length) this.#log.warn({ jobs: running.map((entry) => entry.record.id), graceMs }, 'waiting for running jobs before exiting');
    const finished = await withDeadline(all.then(() => true), graceMs, () => false);
    if (!finished) {
      this.cancelAll('the daemon is shutting down');
      await all;
    }
    await this.#store.flush();
  }

  /** Cancel every running job now (a second SIGTERM). */
  cancelAll(reason: string): void {
    for (const entry of this.#jobs.values()) {
      if (entry.controller && !isFinished(entry.record.status) && !entry.controller.signal.aborted) {
        if (this.#queue.includes(entry.record.id)) this.cancel(entry.record.id, reason);
        else entry.controller.abort(new ForksnapError('CANCELLED', reason, { job: entry.record.id }));
      }
    }
  }

  #entry(id: string): Entry {
    const entry = /^[A-Za-z0-9_-]{1,64}$/.test(id) ? this.#jobs.get(id) : undefined;
    if (!entry) throw new ForksnapError('JOB_NOT_FOUND', `no job with id "${id}" (see GET /v1/jobs)`, { job: id });
    return entry;
  }

  #canStart(vm: string): boolean {
    return this.#runningVms.size < this.options.maxConcurrent && !this.#runningVms.has(vm);
  }

  #pump(): void {
    for (const id of [...this.#queue]) {
      if (this.#runningVms.size >= this.options.maxConcurrent) return;
      const entry = this.#jobs.get(id)!;
      if (this.#runningVms.has(entry.record.vm)) continue;
      this.#queue.splice(this.#queue.indexOf(id), 1);
      this.#start(entry);
    }
  }

  #start(entry: Entry): void {
    const { record } = entry;
    this.#runningVms.add(record.vm);
    entry.record = { ...record, status: 'running', startedAt: new Date().toISOString() };
    void this.#store.save(entry.record);
    const run = this.options.run ?? runJob;
    let result: SnapshotResult | undefined;
    entry.done = run({
      id: record.id,
      request: record.request,
      trigger: record.trigger,
      schedule: record.schedule,
      hooks: this.options.hooksFor?.(record.vm) ?? NO_HOOKS,
      paths: this.options.paths,
      log: this.options.log,
      signal: entry.controller!.signal,
      events: entry.events!,
      onSnapshot: (value) => {
        result = value;
        const { dir: _dir, ...meta } = value;
        entry.record = { ...entry.record, snapshot: meta, snapshotId: meta.id };
      },
    }).then(
      () => {},
      (error: unknown) => {
        this.#log.warn({ job: record.id, vm: record.vm, err: errorMessage(error) }, 'job failed');
        if (!isFinished(entry.record.status)) {
          // runJob always ends with a terminal event; this is the net under it.
          entry.events!.emit({ type: 'job-failed', code: error instanceof ForksnapError ? error.code : 'INTERNAL', message: errorMessage(error) });
        }
      },
    ).finally(async () => {
      this.#runningVms.delete(record.vm);
      await this.#store.save(entry.record);
      for (const listener of this.#finishedListeners) {
        try {
          listener(entry.record, result);
        } catch (error) {
          this.#log.error({ err: errorMessage(error) }, 'a job-finished listener threw');
        }
      }
      this.#pump();
      await this.#prune();
    });
  }

  #fold(entry: Entry, event: JobEvent): void {
    const before = entry.record;
    entry.record = applyJobEvent(before, event);
    if (before.status !== entry.record.status || before.phase !== entry.record.phase || event.type === 'hook' || event.type === 'verdict' || event.type === 'parent-resumed') {
      void this.#store.save(entry.record);
    }
    for (const listener of this.#listeners) {
      try {
        listener(event, entry.record);
      } catch (error) {
        this.#log.error({ err: errorMessage(error) }, 'a job event listener threw');
      }
    }
  }

  async #prune(): Promise<void> {
    const limit = this.options.historyLimit ?? 500;
    const finished = this.list().filter((record) => isFinished(record.status));
    // Event histories (for ?events=1 and replay) are kept for the newest finished jobs only.
    for (const record of finished.slice(0, Math.max(0, finished.length - EVENT_HISTORY_JOBS))) {
      const entry = this.#jobs.get(record.id);
      if (entry) entry.events = undefined;
    }
    for (const record of finished.slice(0, Math.max(0, finished.length - limit))) {
      this.#jobs.delete(record.id);
      await this.#store.remove(record.id);
    }
  }
}

/** What a job's supervisor did (the actions of its recovery attempts, from <state>/jobs/<job>.supervisor.log). */
async function supervisorActions(paths: Paths, job: string): Promise<string[]> {
  const text = await readFile(supervisorLogFile(paths, job), 'utf8').catch(() => '');
  const actions: string[] = [];
  for (const line of text.split('\n')) {
    try {
      const entry = JSON.parse(line) as { actions?: unknown; failures?: unknown };
      if (Array.isArray(entry.actions)) for (const action of entry.actions) if (typeof action === 'string' && !actions.includes(action)) actions.push(action);
      if (Array.isArray(entry.failures)) for (const failure of entry.failures) if (typeof failure === 'string') actions.push(`FAILED: ${failure}`);
    } catch {
      // not a log line (a torn write at the end)
    }
  }
  return actions;
}
