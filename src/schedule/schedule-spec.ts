import { Cron } from 'croner';
import { z } from 'zod';
import { jobRequestSchema } from '../jobs/job-record.js';

/**
 * A per-VM schedule from the config file: a cron expression (5 fields, or 6 with seconds first)
 * in an IANA time zone, the job's options, a retention policy for the snapshots it makes, and what
 * to do about runs missed while the daemon was down.
 */
export function isTimeZone(name: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: name });
    return true;
  } catch {
    return false;
  }
}

export const retentionSchema = z.strictObject({
  /** Always keep the newest N (at least 1: the newest snapshot is never deleted by retention). */
  keepLast: z.number().int().min(1).default(1),
  /** Newest snapshot of each of the last N days (weeks, months) that have snapshots, in the schedule's time zone. */
  daily: z.number().int().min(0).default(0),
  weekly: z.number().int().min(0).default(0),
  monthly: z.number().int().min(0).default(0),
});
export type RetentionPolicy = z.infer<typeof retentionSchema>;

export const MISSED_RUN_POLICIES = ['skip', 'run-once'] as const;

export const scheduleSpecSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/, 'a schedule name is 1-32 letters, digits, "_", "." or "-"'),
  cron: z.string().min(1),
  timezone: z.string().default('UTC').refine(isTimeZone, { message: 'not an IANA time zone (e.g. "Europe/Berlin", "UTC")' }),
  /** After downtime: `skip` waits for the next slot; `run-once` runs one catch-up job at start-up if a slot was missed. */
  missedRuns: z.enum(MISSED_RUN_POLICIES).default('run-once'),
  /** Catch up only on a slot missed at most this long ago. */
  missedRunMaxAgeHours: z.number().positive().default(24),
  retention: retentionSchema.optional(),
  job: jobRequestSchema.omit({ vm: true, snapshotId: true }).prefault({}),
}).superRefine((spec, context) => {
  try {
    new Cron(spec.cron, { paused: true, timezone: isTimeZone(spec.timezone) ? spec.timezone : 'UTC', mode: '5-or-6-parts' });
  } catch (error) {
    context.addIssue({ code: 'custom', path: ['cron'], message: `invalid cron expression "${spec.cron}": ${(error as Error).message.replace(/^CronPattern: /, '')} (5 fields "min hour day month weekday", or 6 with seconds first)` });
  }
});
export type ScheduleSpec = z.infer<typeof scheduleSpecSchema>;

export function cronFor(spec: Pick<ScheduleSpec, 'cron' | 'timezone'>): Cron {
  return new Cron(spec.cron, { paused: true, timezone: spec.timezone, mode: '5-or-6-parts' });
}
