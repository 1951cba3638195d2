import type { Logger } from 'pino';
import type { QemuChildProcess } from '../qemu/child-process.js';
import type { QmpClient } from '../qmp/client.js';
import type { CapturePhaseRunner } from './capture-phases.js';
import type { DowntimeParts } from './downtime-parts.js';

/**
 * A capture strategy streams the parent's RAM and device state into the waiting child QEMU, and
 * decides when the parent is halted and resumed. `auto` takes the first supported one of
 * AUTO_ORDER: fork-postcopy first (the same downtime as fork; the child holds only what its
 * shutdown touches and the image is ready sooner: README "fork-postcopy" under Measured).
 */
export const STRATEGY_NAMES = ['fork', 'fork-postcopy', 'background-snapshot', 'precopy'] as const;
export type StrategyName = (typeof STRATEGY_NAMES)[number];
export const AUTO_ORDER: readonly StrategyName[] = ['fork-postcopy', 'fork', 'background-snapshot', 'precopy'];
/** The strategies whose snapshot process is forked by the patched QEMU (x-fork-snapshot). */
export const FORKING_STRATEGIES: readonly StrategyName[] = ['fork', 'fork-postcopy'];

/**
 * fork-postcopy: what the snapshot process sends besides the pages the child asks for. 'off': only
 * those (the child holds just what its shutdown touched); 'on': every other page too, as fast as
 * it can; a number: every other page at most at that many bytes/s.
 */
export type BackgroundPush = 'on' | 'off' | number;

export interface CaptureTimeouts {
  readonly haltMs: number;
  readonly diskSnapshotMs: number;
  readonly captureMs: number;
}

export interface CaptureContext {
  readonly parent: QmpClient;
  readonly child: QmpClient;
  readonly childProcess: QemuChildProcess;
  /** The parent QEMU's pid (for recovery that cannot go through QMP). */
  readonly parentPid: number;
  /** The child is listening here (migrate-incoming already issued). */
  readonly migrationUri: string;
  /** Runs the strategy's steps (halt, disk-snapshot, capture, switchover) as the job's phases. */
  readonly phases: CapturePhaseRunner;
  readonly timeouts: CaptureTimeouts;
  readonly log: Logger;
  /** Called right before the strategy makes the parent pause (`stop`, or a migration that will pause it). */
  willHalt(): void;
  /** Called right before the strategy starts the parent's migration: from then on it is forksnap's. */
  willMigrate(): void;
  /** Snapshot every disk; the strategy calls it while the parent is paused and flushed. */
  atHalt(signal: AbortSignal): Promise<void>;
  /**
   * Record that the parent's QEMU kept a stale write-tracking flag after a failed background
   * snapshot (QEMU 7.2 bug, see release-write-protection.ts): until a background snapshot succeeds
   * again, any other migration of it sends a corrupt stream.
   */
  markWriteTrackingStale(): Promise<void>;
  /**
   * fork() failed before any state left the parent (still halted, disks snapshotted): switch the
   * parent to background-snapshot and give back a fresh child listening for the state.
   */
  fallBackToBackgroundSnapshot(reason: string, signal: AbortSignal): Promise<{ child: QmpClient; childProcess: QemuChildProcess }>;
  /** Tell the job the parent runs again (it publishes the downtime, and where it went when known). */
  parentResumed(downtimeMs: number, parts?: DowntimeParts): void;
}

export interface CaptureResult {
  /** The strategy that actually captured the state (after a fallback, not the requested one). */
  readonly strategy: StrategyName;
  /** QEMU's timestamp of the parent's STOP event (host clock, ms). */
  readonly haltedAtMs: number;
  /** QEMU's timestamp of the parent's RESUME event. */
  readonly resumedAtMs: number;
  readonly downtimeMs: number;
  /** Where the downtime went (halt-then-migrate strategies; downtime-parts.ts). */
  readonly downtimeParts?: DowntimeParts;
  /** When the child had loaded the full state (host clock, ms); fork-postcopy: the device state, ready to run. */
  readonly stateCompleteAtMs: number;
  /** fork-postcopy: the snapshot process still serves the child's RAM; the job ends it after the shutdown. */
  readonly postcopy?: PostcopyTail;
}

/** fork-postcopy, after the capture: the parent's snapshot process serves the child's page faults. */
export interface PostcopyTail {
  /** Rejects (CAPTURE_FAILED) as soon as the snapshot process fails: the child then waits for pages forever. */
  readonly failed: Promise<never>;
  /** The counters so far (query-migrate of the parent). */
  stats(signal: AbortSignal): Promise<PostcopyStats>;
  /** Once the child is gone: wait for the snapshot process to end (it ends when the child closes the channel), cancel it if it does not. */
  end(signal: AbortSignal): Promise<PostcopyStats>;
  /** Stop watching (idempotent). */
  close(): void;
}

export interface PostcopyStats {
  /** Page requests the child made (each one a page fault in the child that waited for the snapshot process). */
  readonly requests: number;
  /** RAM bytes the snapshot process sent (requested and pushed). */
  readonly transferredBytes: number;
  /** Guest RAM bytes never sent: the child did not need them. */
  readonly unsentBytes: number;
  readonly totalBytes: number;
  /** How the snapshot process ended: completed (the child closed the channel, or every page was sent), or why not. */
  readonly ended?: string;
}

export interface CaptureStrategy {
  readonly name: StrategyName;
  /** Migration capabilities to switch on in the parent for this capture. */
  readonly capabilities: Record<string, boolean>;
  /** Migration parameters of the parent this capture sets (on top of max-bandwidth). */
  readonly parameters?: Record<string, unknown>;
  /** Migration capabilities the child needs before it listens (fork-postcopy: postcopy-ram). */
  readonly childCapabilities?: Record<string, boolean>;
  run(context: CaptureContext): Promise<CaptureResult>;
}
