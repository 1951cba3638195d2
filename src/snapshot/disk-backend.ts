import type { Logger } from 'pino';
import type { QmpClient } from '../qmp/client.js';
import type { ChildDisk } from '../isolation/child-command-line.js';
import type { ParentDisk } from '../vm/inspect.js';

/**
 * A way of taking a writable point-in-time snapshot of one disk. Its life cycle within a job:
 *
 *   prepare()        before the halt: make the files the child QEMU opens (the child starts early,
 *                    with -incoming its images stay inactive and unlocked until the state arrives)
 *   commitAtHalt()   the parent is paused and its I/O drained and flushed: freeze this instant.
 *                    Must be fast (it is parent downtime). Returns the undo to register.
 *   materialise()    after the child shut down: a self-contained image in the store
 *   crashImage()     optional: the disk as it was at the halt, without the child's shutdown
 *   finish()         give the parent its original files back (merge the overlay) and remove temp files
 *   discard()        failure path: remove every temp file (after the undo of commitAtHalt ran)
 */
export type DiskBackendName = 'reflink' | 'qcow2-overlay';

export interface DiskBackendContext {
  readonly parent: QmpClient;
  readonly workDir: string;
  readonly jobId: string;
  readonly log: Logger;
}

export interface DiskSnapshot {
  readonly backend: DiskBackendName;
  readonly disk: ParentDisk;
  readonly child: ChildDisk;
  /** Files this snapshot creates outside the job's work dir (journaled for crash recovery). */
  readonly tempFiles: readonly string[];
  /** Set when commitAtHalt moves the parent onto an overlay (journaled before it happens). */
  readonly parentOverlay?: { readonly node: string; readonly file: string };
  commitAtHalt(signal: AbortSignal): Promise<{ undo?: () => Promise<void> }>;
  /** Capture the crash-consistent state at the halt for comparison; called right after commitAtHalt. */
  keepCrashImage?(signal: AbortSignal): Promise<void>;
  materialise(dest: string, signal: AbortSignal, onProgress: (percent: number) => void): Promise<void>;
  materialiseCrashImage?(dest: string, signal: AbortSignal, onProgress: (percent: number) => void): Promise<void>;
  finish(signal: AbortSignal, onProgress: (percent: number) => void): Promise<void>;
  discard(): Promise<void>;
}

export interface DiskBackend {
  readonly name: DiskBackendName;
  /** Resolves undefined when this backend cannot serve the disk (e.g. no reflink on that filesystem). */
  prepare(disk: ParentDisk, context: DiskBackendContext, signal: AbortSignal): Promise<DiskSnapshot | undefined>;
}

/** The image format the snapshot keeps: the parent's top format. */
export function snapshotFormat(disk: ParentDisk): 'raw' | 'qcow2' {
  return disk.format === 'raw' ? 'raw' : 'qcow2';
}
