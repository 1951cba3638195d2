import type { DowntimeParts } from '../forker/downtime-parts.js';
import type { SnapshotView } from '../snapshot/store.js';

/**
 * Typed progress events of a snapshot job: the CLI renders them (progress bar or JSON lines), the
 * daemon forwards them over WebSocket. Every event carries the job, a sequence number and a time.
 */
export type Phase =
  | 'preflight'
  | 'prepare'
  | 'halt'
  | 'disk-snapshot'
  | 'capture'
  | 'switchover'
  | 'isolate'
  | 'shutdown'
  | 'materialise'
  | 'finish'
  | 'cleanup';

export type Consistency = 'clean' | 'crash-consistent';

/** The result of a snapshot job, one shape for success and failure (filled as far as the job got). */
export interface JobResultFields {
  durationMs: number;
  /** Every phase's duration so far, ms. */
  phasesMs: Record<string, number>;
  downtimeMs?: number;
  strategy?: string;
  strategyFallback?: { from: string; reason: string };
  consistency?: Consistency;
  snapshotId?: string;
  /** Clean-up steps that failed (the journal is kept for recovery). */
  cleanupFailures?: string[];
}

export type JobEventBody =
  /** The job was taken (by the daemon's queue, or the CLI in-process); `queuePosition` 0 = runs now. */
  | { type: 'job-accepted'; vm: string; queuePosition: number; trigger: string }
  /** A pre or post hook command ran (src/hooks). */
  | { type: 'hook'; stage: 'pre' | 'post'; command: string; exitCode: number | undefined; ok: boolean; durationMs: number; outputTail: string }
  | { type: 'job-started'; vm: string; strategy: string; diskBackends: Record<string, string> }
  | { type: 'phase-start'; phase: Phase }
  | { type: 'phase-progress'; phase: Phase; percent?: number; bytes?: number; totalBytes?: number; message?: string }
  | { type: 'phase-end'; phase: Phase; durationMs: number }
  | { type: 'parent-resumed'; downtimeMs: number; downtimeParts?: DowntimeParts }
  | { type: 'strategy-fallback'; from: string; to: string; reason: string }
  | { type: 'verdict'; consistency: Consistency; reason: string }
  /**
   * `snapshot` (the snapshot view: absolute image paths, see store.ts) is set on the job's last
   * event, once the snapshot is committed and the post hooks ran.
   */
  | ({ type: 'job-done'; snapshotId: string; consistency: Consistency; downtimeMs: number; durationMs: number; snapshot?: SnapshotView } & Partial<JobResultFields>)
  /** A failed job carries the same result fields as job-done, as far as the job got (B, issue 13). */
  | ({ type: 'job-failed'; code: string; message: string; phase?: Phase | undefined } & Partial<JobResultFields>);

export type JobEvent = JobEventBody & { readonly job: string; readonly seq: number; readonly time: string };

export type JobEventListener = (event: JobEvent) => void;

export class JobEventStream {
  #seq = 0;
  readonly #listeners = new Set<JobEventListener>();
  readonly history: JobEvent[] = [];

  constructor(readonly job: string) {}

  emit(body: JobEventBody): JobEvent {
    const event = { ...body, job: this.job, seq: ++this.#seq, time: new Date().toISOString() } as JobEvent;
    this.history.push(event);
    for (const listener of [...this.#listeners]) {
      try {
        listener(event);
      } catch {
        // a listener must never break the job
      }
    }
    return event;
  }

  subscribe(listener: JobEventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
