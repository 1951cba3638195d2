import type { Logger } from 'pino';
import type { QmpClient } from '../qmp/client.js';
import type { ChildDisk } from '../isolation/child-command-line.js';
import type { ParentDisk } from '../vm/inspect.js';
import type { DiskImage } from './store.js';

/**
 * A way of taking a writable point-in-time snapshot of one disk. Its life cycle within a job:
 *
 *   prepare()        before the halt: make the files the child QEMU opens (the child starts early,
 *                    with -incoming its images stay inactive and unlocked until the state arrives)
 *   commitAtHalt()   the parent is paused and its I/O drained and flushed: freeze this instant.
 *                    Must be fast (it is parent downtime). Returns the undo to register.
 *   materialise()    after the child shut down: a self-contained image in the store (or, with
 *                    materialiseOnto(), an increment over an earlier snapshot's image)
 *   crashImage()     optional: the disk as it was at the halt, without the child's shutdown
 *   finish()         drop the view: give the parent its original graph back and remove temp files
 *                    (the legacy overlay backend merges the parent's overlay back here)
 *   discard()        failure path: the same "drop the view", idempotent
 *
 * A snapshot may also give `haltActions()` (QMP `transaction` actions the job runs in ONE
 * transaction for all disks at the halt, before any commitAtHalt) and `watch()` (a free-space watch
 * while the view is alive, TEAM.md interface 5). `journal` names everything it adds to the parent
 * QEMU and the filesystem, before it is added, for crash recovery (see fleecing-view.ts dropView).
 */
export type DiskBackendName = 'reflink' | 'fleecing' | 'qcow2-overlay';

/** What a disk snapshot adds (or will add at the halt) to the parent QEMU and the filesystem. */
export interface DiskJournal {
  /** Block nodes, in the order to delete them (blockdev-del; a missing node is skipped). */
  readonly nodes?: string[];
  readonly jobs?: string[];
  /** Block export ids (block-export-del, mode hard). */
  readonly exports?: string[];
  /** Files to delete once the QMP side is dropped. */
  readonly files: string[];
  /** This job started the parent's NBD server: stop it once no NBD export is left. */
  readonly nbdServer?: boolean;
  /**
   * Guest devices re-pointed at a filter node: put `node` back (qom-set drive) only while the
   * device's root IS `filter` (qom-set to the node it already has aborts QEMU 7.2), before the
   * filter is deleted.
   */
  readonly devices?: { qdev: string; node: string; filter: string }[];
}

export interface DiskBackendContext {
  readonly parent: QmpClient;
  readonly workDir: string;
  readonly jobId: string;
  readonly log: Logger;
  /** Free space to keep on the fleecing/clone filesystem while the view lives (default: FORKSNAP_SPACE_RESERVE_MIB, 512 MiB). */
  readonly spaceReserveBytes?: number;
  /** Owner of the parent QEMU process: the files it must open (fleecing image, NBD socket dir) are given to it. */
  readonly parentOwner?: { readonly uid: number; readonly gid: number };
  /**
   * Journal what the snapshot is about to add (called before each addition, with the whole journal
   * so far; the job persists it as this disk's entry before returning).
   */
  readonly record?: (journal: DiskJournal) => Promise<void>;
}

export interface DiskSnapshot {
  readonly backend: DiskBackendName;
  readonly disk: ParentDisk;
  readonly child: ChildDisk;
  /** Files this snapshot creates outside the job's work dir (journaled for crash recovery). */
  readonly tempFiles: readonly string[];
  /** Set when commitAtHalt moves the parent onto an overlay (journaled before it happens). */
  readonly parentOverlay?: { readonly node: string; readonly file: string };
  /** Everything this snapshot adds to the parent and the filesystem (journaled before the halt). */
  readonly journal: DiskJournal;
  /** QMP transaction actions to run at the halt, in the one transaction of all disks. */
  haltActions?(): { type: string; data: object }[];
  /**
   * Watch the free space of the filesystem the view grows on, from now until finish/discard.
   * `onLow` is called at most once, after the snapshot was broken (the guest is never blocked);
   * the job then fails with NO_SPACE. Returns the function that stops watching.
   */
  watch?(onLow: (why: string) => void): () => void;
  commitAtHalt(signal: AbortSignal): Promise<{ undo?: () => Promise<void> }>;
  /** Capture the crash-consistent state at the halt for comparison; called right after commitAtHalt. */
  keepCrashImage?(signal: AbortSignal): Promise<void>;
  materialise(dest: string, signal: AbortSignal, onProgress: (percent: number) => void): Promise<void>;
  /**
   * Optional: write the image as a qcow2 over `backing` (an image of an earlier snapshot in the
   * store, named relatively) holding only what differs from it, instead of a full image: what the
   * store keeps of an incremental snapshot, without first writing the whole disk
   * (src/snapshot/incremental.ts writeIncrementalImage). Backends without it (reflink: its full
   * image shares extents already) are made incremental after the commit.
   */
  materialiseOnto?(dest: string, backing: NonNullable<DiskImage['backing']>, signal: AbortSignal, onProgress: (percent: number) => void): Promise<void>;
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
