import type { Logger } from 'pino';
import type { DowntimeParts } from '../../forker/downtime-parts.js';
import type { Paths } from '../../config.js';
import type { ForksnapError } from '../../errors.js';
import type { BackgroundPush, PostcopyStats, StrategyName } from '../../forker/strategy.js';
import type { Consistency } from '../../isolation/drive-shutdown.js';
import type { DiskBackendName } from '../../snapshot/disk-backend.js';
import type { UndoStack } from '../../util/undo-stack.js';
import type { JobEventStream } from '../events.js';
import type { JobJournal } from '../journal.js';
import type { Supervisor } from '../../supervisor/start-supervisor.js';
import type { PhaseRunner } from '../phase-runner.js';

/**
 * What the phases of one snapshot job share (src/jobs/phases/*): the job's identity and options,
 * its logger, event stream, phase runner, undo stack and journal, and the outcome filled in as it
 * goes, reported alike on success and failure. Each phase takes what earlier phases produced as
 * arguments; the context holds no phase's results.
 */
export interface SnapshotJobTimeouts {
  preflightMs: number;
  prepareMs: number;
  haltMs: number;
  diskSnapshotMs: number;
  captureMs: number;
  isolateMs: number;
  shutdownMs: number;
  materialiseMs: number;
  finishMs: number;
  /** The clean-up after the job (undo and journal), success or failure: bounded too. */
  cleanupMs: number;
}

export const DEFAULT_TIMEOUTS: SnapshotJobTimeouts = {
  preflightMs: 30_000,
  prepareMs: 90_000,
  haltMs: 30_000,
  diskSnapshotMs: 30_000,
  captureMs: 30 * 60_000,
  isolateMs: 30_000,
  shutdownMs: 120_000,
  materialiseMs: 60 * 60_000,
  finishMs: 10 * 60_000,
  cleanupMs: 10 * 60_000,
};

export interface SnapshotJobOptions {
  readonly vm: string;
  readonly snapshotId?: string | undefined;
  readonly jobId?: string | undefined;
  readonly strategy?: StrategyName | 'auto';
  readonly diskBackend?: DiskBackendName | 'auto';
  /** Also keep the disks as they were at the halt (crash-consistent), for comparison. */
  readonly keepCrashImage?: boolean;
  /** 'incremental' (default): images stored as what differs from the VM's previous snapshot where possible; 'full': self-contained. */
  readonly storage?: 'full' | 'incremental';
  readonly labels?: Record<string, string>;
  /** Migration bandwidth cap in bytes/s, to limit the capture's load on the host (default: unlimited). */
  readonly maxBandwidth?: number | undefined;
  /** fork-postcopy: what is pushed besides the pages the child asks for (default 'off'). */
  readonly backgroundPush?: BackgroundPush | undefined;
  /** Free space (MiB) the fleecing / clone filesystem keeps while a view lives; below it the snapshot is broken (NO_SPACE), never the guest's write. Default FORKSNAP_SPACE_RESERVE_MIB or 512. */
  readonly spaceReserveMiB?: number | undefined;
  readonly timeouts?: Partial<SnapshotJobTimeouts>;
  readonly paths: Paths;
  readonly log: Logger;
  readonly signal: AbortSignal;
  readonly events?: JobEventStream;
}

/** Known so far; the same fields end up in job-done and job-failed. */
export interface JobOutcome {
  strategy?: StrategyName;
  strategyFallback?: { from: string; reason: string };
  downtimeMs?: number;
  /** Where the downtime went (fork, background-snapshot): src/forker/downtime-parts.ts. */
  downtimeParts?: DowntimeParts;
  /** The parent's page tables (VmPTE) and resident memory just before the halt: fork() copies the page tables. */
  parentMemory?: { vmPteBytes?: number; vmRssBytes?: number; anonHugeBytes?: number; collapse?: { beforeBytes: number; afterBytes: number; ms: number; failedBytes: number } };
  haltedAtMs?: number;
  /** fork-postcopy: what the snapshot process served, and how it ended. */
  postcopy?: PostcopyStats & { backgroundPush: BackgroundPush };
  /** When the child ran its first instruction (`cont`), host clock ms. */
  childRunsAtMs?: number;
  consistency?: Consistency;
  consistencyReason?: string;
  snapshotId?: string;
}

export interface JobContext {
  readonly job: string;
  readonly vm: string;
  readonly options: SnapshotJobOptions;
  readonly timeouts: SnapshotJobTimeouts;
  readonly paths: Paths;
  readonly log: Logger;
  readonly events: JobEventStream;
  readonly phases: PhaseRunner;
  readonly undo: UndoStack;
  readonly startedAt: number;
  /**
   * Fail the running job from outside its current phase (a disk view's free-space watch broke the
   * snapshot: NO_SPACE). The current phase's signal aborts with `error` as its reason; the first
   * call wins. The guest is never blocked by this: the view is already broken.
   */
  breakJob(error: ForksnapError): void;
  /** Written from preflight on (before each change takes effect); undefined before. */
  journal: JobJournal | undefined;
  /** The job's dead-man's switch (src/supervisor/): started before the journal's first write. */
  supervisor?: Supervisor | undefined;
  readonly outcome: JobOutcome;
}

/** The journal, which every phase after preflight has. */
export function journalOf(context: JobContext): JobJournal {
  if (!context.journal) throw new Error('the job journal is not open yet (preflight did not run)');
  return context.journal;
}
