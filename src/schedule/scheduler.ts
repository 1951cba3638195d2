import type { Cron } from 'croner';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { errorMessage } from '../errors.js';
import type { JobRecord, JobRequest, JobTrigger } from '../jobs/job-record.js';
import { deleteSnapshot, listSnapshots } from '../snapshot/store.js';
import type { Clock } from './clock.js';
import { applyRetention } from './retention.js';
import { readScheduleState, scheduleKey, writeScheduleState, type ScheduleState } from './schedule-state.js';
import { cronFor, type ScheduleSpec } from './schedule-spec.js';

/** Labels a scheduled job puts on its snapshot; retention only ever looks at snapshots carrying them. */
export const SCHEDULE_LABEL = 'forksnap.schedule';
export const SLOT_LABEL = 'forksnap.slot';
const MAX_SLEEP_MS = 60_000;

export interface ScheduleEntry {
  readonly vm: string;
  readonly spec: ScheduleSpec;
}

export interface SchedulerOptions {
  readonly paths: Paths;
  readonly log: Logger;
  readonly clock: Clock;
  readonly schedules: readonly ScheduleEntry[];
  readonly submit: (request: JobRequest, origin: { trigger: JobTrigger; schedule: string }) => Promise<JobRecord>;
  /** Whether a job of this schedule is still queued or running (a slot is then skipped, not piled up). */
  readonly busy: (vm: string, schedule: string) => boolean;
}

interface Item extends ScheduleEntry {
  readonly key: string;
  readonly cron: Cron;
  next: number | undefined;
}

/**
 * Fires per-VM cron schedules into the job engine. One loop sleeps until the earliest next slot
 * (at most a minute at a time, so clock jumps are noticed); each due slot submits a job labelled
 * with its schedule and slot. At start, a slot missed while the daemon was down is run once or
 * skipped, per the schedule's policy. After a scheduled job succeeds, `enforceRetention` deletes
 * that schedule's snapshots beyond its retention policy.
 */
export class Scheduler {
  readonly #items: Item[];
  readonly #log: Logger;
  readonly #stop = new AbortController();
  #state: ScheduleState = {};
  #loop: Promise<void> | undefined;

  constructor(private readonly options: SchedulerOptions) {
    this.#log = options.log.child({ component: 'scheduler' });
    this.#items = options.schedules.map((entry) => ({ ...entry, key: scheduleKey(entry.vm, entry.spec.name), cron: cronFor(entry.spec), next: undefined }));
  }

  async start(): Promise<void> {
    this.#state = await readScheduleState(this.options.paths);
    const now = this.options.clock.now();
    for (const item of this.#items) {
      const latest = item.cron.previousRuns(1, new Date(now + 1))[0]?.getTime();
      const handled = this.#state[item.key]?.lastSlot;
      if (latest !== undefined && handled === undefined) {
        // First time this schedule is seen: nothing was missed yet.
        this.#state[item.key] = { lastSlot: new Date(latest).toISOString(), outcome: 'skipped' };
      } else if (latest !== undefined && handled !== undefined && latest > Date.parse(handled)) {
        const ageHours = (now - latest) / 3_600_000;
        const catchUp = item.spec.missedRuns === 'run-once' && ageHours <= item.spec.missedRunMaxAgeHours;
        this.#log.warn({ vm: item.vm, schedule: item.spec.name, missedSlot: new Date(latest).toISOString(), lastHandled: handled, policy: item.spec.missedRuns, catchUp }, 'a scheduled run was missed while the daemon was down');
        if (catchUp) await this.#fire(item, latest, true);
        else this.#state[item.key] = { lastSlot: new Date(latest).toISOString(), outcome: 'skipped' };
      }
      item.next = item.cron.nextRun(new Date(now))?.getTime();
    }
    await this.#save();
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stop.abort(new Error('scheduler stopped'));
    await this.#loop;
  }

  list(): { vm: string; name: string; cron: string; timezone: string; nextRunAt: string | undefined; lastSlot: string | undefined; lastJob: string | undefined }[] {
    return this.#items.map((item) => ({
      vm: item.vm,
      name: item.spec.name,
      cron: item.spec.cron,
      timezone: item.spec.timezone,
      nextRunAt: item.next !== undefined ? new Date(item.next).toISOString() : undefined,
      lastSlot: this.#state[item.key]?.lastSlot,
      lastJob: this.#state[item.key]?.lastJob,
    }));
  }

  /** Delete the schedule's snapshots of this VM that its retention policy does not keep. */
  async enforceRetention(vm: string, scheduleName: string): Promise<string[]> {
    const item = this.#items.find((entry) => entry.vm === vm && entry.spec.name === scheduleName);
    if (!item?.spec.retention) return [];
    const mine = (await listSnapshots(this.options.paths, vm)).filter((meta) => meta.labels[SCHEDULE_LABEL] === scheduleName);
    const decision = applyRetention(mine, item.spec.retention, item.spec.timezone);
    for (const id of decision.remove) {
      try {
        await deleteSnapshot(this.options.paths, id);
        this.#log.info({ vm, schedule: scheduleName, snapshot: id }, 'retention deleted a snapshot');
      } catch (error) {
        this.#log.error({ vm, schedule: scheduleName, snapshot: id, err: errorMessage(error) }, 'retention could not delete a snapshot');
      }
    }
    return decision.remove;
  }

  async #run(): Promise<void> {
    const { clock } = this.options;
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      const now = clock.now();
      for (const item of this.#items) {
        if (item.next === undefined || item.next > now) continue;
        const slot = item.next;
        item.next = item.cron.nextRun(new Date(Math.max(now, slot)))?.getTime();
        await this.#fire(item, slot, false);
        await this.#save();
      }
      const next = Math.min(...this.#items.map((item) => item.next ?? Number.POSITIVE_INFINITY));
      const wait = Math.min(MAX_SLEEP_MS, Math.max(0, next - clock.now()));
      try {
        await clock.sleep(wait, signal);
      } catch {
        return;
      }
    }
  }

  async #fire(item: Item, slot: number, catchUp: boolean): Promise<void> {
    const slotIso = new Date(slot).toISOString();
    const log = this.#log.child({ vm: item.vm, schedule: item.spec.name, slot: slotIso });
    if (this.options.busy(item.vm, item.spec.name)) {
      log.warn('the previous job of this schedule is still queued or running; this slot is skipped');
      this.#state[item.key] = { ...this.#state[item.key], lastSlot: slotIso, outcome: 'skipped' };
      return;
    }
    const request: JobRequest = { ...item.spec.job, vm: item.vm, labels: { ...item.spec.job.labels, [SCHEDULE_LABEL]: item.spec.name, [SLOT_LABEL]: slotIso } };
    try {
      const record = await this.options.submit(request, { trigger: 'schedule', schedule: item.spec.name });
      this.#state[item.key] = { lastSlot: slotIso, lastJob: record.id, outcome: 'submitted' };
      log.info({ job: record.id, catchUp }, catchUp ? 'catch-up run for a missed slot submitted' : 'scheduled job submitted');
    } catch (error) {
      this.#state[item.key] = { ...this.#state[item.key], lastSlot: slotIso, outcome: 'failed' };
      log.error({ err: errorMessage(error) }, 'the scheduled job could not be submitted');
    }
  }

  async #save(): Promise<void> {
    await writeScheduleState(this.options.paths, this.#state).catch((error: unknown) => {
      this.#log.error({ err: errorMessage(error) }, 'could not persist the schedule state');
    });
  }
}
