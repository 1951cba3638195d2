import { z } from 'zod';
import { STRATEGY_NAMES } from '../forker/strategy.js';
import { snapshotMetaSchema } from '../snapshot/store.js';
import type { JobEvent } from './events.js';

/**
 * What the daemon knows about one snapshot job: the request, its status, and a summary folded from
 * its events (current phase and progress, downtime, verdict, result or error). The API and the
 * WebSocket "state" message carry this; it is persisted so job status survives a restart.
 *
 * Status: queued -> running -> succeeded | failed | cancelled.
 */
export const JOB_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
export const isFinished = (status: JobStatus) => status === 'succeeded' || status === 'failed' || status === 'cancelled';

export const LABEL_KEY = /^[A-Za-z0-9_.-]{1,64}$/;

/** A snapshot job request, as the HTTP API and the scheduler give it (names are checked separately). */
export const jobRequestSchema = z.strictObject({
  vm: z.string(),
  snapshotId: z.string().optional(),
  strategy: z.enum(['auto', ...STRATEGY_NAMES]).default('auto'),
  /** 'qcow2-overlay' is accepted as an alias of 'fleecing' (the backend it was replaced by). */
  diskBackend: z.enum(['auto', 'reflink', 'fleecing', 'qcow2-overlay']).default('auto'),
  shutdownTimeoutSeconds: z.number().positive().max(24 * 3600).optional(),
  keepCrashImage: z.boolean().default(false),
  labels: z.record(z.string().regex(LABEL_KEY, 'label keys are 1-64 letters, digits, "_", "." or "-"'), z.string().max(256)).default({}),
  /** Migration bandwidth cap, bytes/s (limits the capture's load on the host). */
  maxBandwidth: z.number().int().min(65_536).optional(),
  /** Free space (MiB) the fleecing / clone filesystem keeps while a view lives; default FORKSNAP_SPACE_RESERVE_MIB or 512. */
  spaceReserveMiB: z.number().int().min(0).max(1 << 30).optional(),
  /** A crash-consistent outcome fails the job (NOT_CLEAN) and keeps nothing (issue 12). */
  requireClean: z.boolean().default(false),
  /** Verify the snapshot once it is stored (`forksnap snapshot verify`); a failed check fails the job (VERIFY_FAILED) and the snapshot is kept with the verdict. */
  verify: z.boolean().default(false),
  /**
   * How the images are stored: 'incremental' (the default: a qcow2 holding what differs from the
   * VM's previous snapshot in the store, or a full image with the reason why not;
   * src/snapshot/incremental.ts) or 'full' (self-contained, --full).
   */
  storage: z.enum(['full', 'incremental']).default('incremental'),
  /**
   * fork-postcopy only: what the snapshot process sends besides the pages the child asks for:
   * 'off' (the default: the child holds only what its shutdown touched), 'on' (everything, as fast
   * as it goes) or a rate in bytes/s.
   */
  backgroundPush: z.union([z.enum(['on', 'off']), z.number().int().min(65_536)]).default('off'),
});
export type JobRequest = z.infer<typeof jobRequestSchema>;

export const JOB_TRIGGERS = ['api', 'cli', 'schedule'] as const;
export type JobTrigger = (typeof JOB_TRIGGERS)[number];

export const jobRecordSchema = z.object({
  id: z.string(),
  vm: z.string(),
  status: z.enum(JOB_STATUSES),
  trigger: z.enum(JOB_TRIGGERS),
  schedule: z.string().optional(),
  request: jobRequestSchema,
  createdAt: z.string(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  phase: z.string().optional(),
  progress: z.object({ phase: z.string(), percent: z.number().optional(), bytes: z.number().optional(), totalBytes: z.number().optional(), message: z.string().optional() }).optional(),
  phasesMs: z.record(z.string(), z.number()),
  strategy: z.string().optional(),
  downtimeMs: z.number().optional(),
  consistency: z.enum(['clean', 'crash-consistent']).optional(),
  consistencyReason: z.string().optional(),
  snapshotId: z.string().optional(),
  snapshot: snapshotMetaSchema.optional(),
  hooks: z.array(z.object({ stage: z.enum(['pre', 'post']), command: z.string(), exitCode: z.number().optional(), ok: z.boolean(), durationMs: z.number() })),
  error: z.object({ code: z.string(), message: z.string(), phase: z.string().optional() }).optional(),
  /** seq of the last event folded in: a WebSocket client's next event has seq lastSeq + 1. */
  lastSeq: z.number(),
});
export type JobRecord = z.infer<typeof jobRecordSchema>;

export function newJobRecord(id: string, request: JobRequest, trigger: JobTrigger, schedule?: string): JobRecord {
  return { id, vm: request.vm, status: 'queued', trigger, ...(schedule ? { schedule } : {}), request, createdAt: new Date().toISOString(), phasesMs: {}, hooks: [], lastSeq: 0 };
}

/** Fold one event into the record (pure: returns a new record). */
export function applyJobEvent(record: JobRecord, event: JobEvent): JobRecord {
  const next: JobRecord = { ...record, lastSeq: Math.max(record.lastSeq, event.seq) };
  switch (event.type) {
    case 'phase-start':
      if (next.status === 'queued') {
        next.status = 'running';
        next.startedAt ??= event.time;
      }
      next.phase = event.phase;
      next.progress = { phase: event.phase, percent: 0 };
      break;
    case 'phase-progress':
      next.progress = { phase: event.phase, percent: event.percent, bytes: event.bytes, totalBytes: event.totalBytes, message: event.message };
      break;
    case 'phase-end':
      next.phasesMs = { ...next.phasesMs, [event.phase]: (next.phasesMs[event.phase] ?? 0) + event.durationMs };
      next.progress = { phase: event.phase, percent: 100 };
      break;
    case 'job-started':
      next.strategy = event.strategy;
      break;
    case 'parent-resumed':
      next.downtimeMs = event.downtimeMs;
      break;
    case 'verdict':
      next.consistency = event.consistency;
      next.consistencyReason = event.reason;
      break;
    case 'hook':
      if (next.status === 'queued') {
        next.status = 'running';
        next.startedAt ??= event.time;
      }
      next.hooks = [...next.hooks, { stage: event.stage, command: event.command, ...(event.exitCode !== undefined ? { exitCode: event.exitCode } : {}), ok: event.ok, durationMs: event.durationMs }];
      break;
    case 'job-done':
      next.status = 'succeeded';
      next.finishedAt = event.time;
      next.snapshotId = event.snapshotId;
      next.consistency = event.consistency;
      next.downtimeMs = event.downtimeMs;
      next.progress = undefined;
      break;
    case 'job-failed':
      next.status = event.code === 'CANCELLED' ? 'cancelled' : 'failed';
      next.finishedAt = event.time;
      next.error = { code: event.code, message: event.message, ...(event.phase ? { phase: event.phase } : {}) };
      next.progress = undefined;
      break;
    default:
      break;
  }
  return next;
}
