import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { workRoot } from '../../config.js';
import { ForksnapError } from '../../errors.js';
import { FAST_BANDWIDTH } from '../../forker/migration-config.js';
import { FORKING_STRATEGIES } from '../../forker/strategy.js';
import { processIdentity as pidIdentity } from '../../qemu/process-info.js';
import { collapseGuestRam, type CollapseReport } from '../../qemu/collapse-guest-ram.js';
import { buildChildArgv, type ChildDisk } from '../../isolation/child-command-line.js';
import { argvAs, childCredentials, grantTo } from '../../isolation/child-credentials.js';
import type { DiskBackendContext, DiskJournal, DiskSnapshot } from '../../snapshot/disk-backend.js';
import { FLEECING_INCOMPATIBLE_STRATEGIES, fleecingBackend } from '../../snapshot/fleecing-backend.js';
import { processIdentity } from '../../isolation/child-credentials.js';
import { spaceReserveMiB } from '../space-preflight.js';
import { reflinkBackend } from '../../snapshot/reflink-backend.js';
import type { ParentDisk } from '../../vm/inspect.js';
import { ChildSlot } from '../child-slot.js';
import type { DiskAdditions } from '../journal.js';
import { journalOf, type JobContext } from './job-context.js';
import { ParentMigrationSettings } from './parent-migration-settings.js';
import type { Preflight } from './preflight.js';

/**
 * Phase 2, prepare: everything that can be done before the halt, so the halt itself is short.
 * Ordering rules:
 * - each change is journaled before it takes effect (work dir, disk files, child pid);
 * - the disk-snapshot files exist before the child starts (it opens them; with -incoming its images
 *   stay inactive and unlocked until the state arrives);
 * - the child is checked against the parent before `migrate-incoming`, and the parent's migration
 *   settings are changed last (nothing of the user's is touched if anything earlier refuses).
 */
export interface Prepared {
  readonly workDir: string;
  readonly migrationUri: string;
  readonly snapshots: readonly DiskSnapshot[];
  readonly slot: ChildSlot;
  readonly migrationSettings: ParentMigrationSettings;
  /** fork: what collapsing the parent's guest RAM into huge pages did (src/qemu/collapse-guest-ram.ts). */
  readonly hugePages?: CollapseReport;
}

export async function prepare(context: JobContext, pre: Preflight): Promise<Prepared> {
  const { job, options, undo, log } = context;
  const journal = journalOf(context);
  return context.phases.run('prepare', context.timeouts.prepareMs, async ({ signal, log: phaseLog }) => {
    const workDir = path.join(workRoot(context.paths), job);
    const migrationUri = `unix:${path.join(workDir, 'migrate.sock')}`;
    const childQmpSocket = path.join(workDir, 'child-qmp.sock');
    refuseLongSocketPaths(workDir, context.paths.stateDir);
    await journal.update(() => ({ workDir }));
    await mkdir(workDir, { recursive: true });
    // The work dir may hold what a disk view still uses (a fleecing image the parent writes to):
    // it is removed only if every disk snapshot was dropped cleanly, else kept for recovery.
    const undropped = new Set<string>();
    undo.push('remove work dir', async () => {
      if (undropped.size > 0) throw new Error(`kept ${workDir}: the disk snapshot of ${[...undropped].join(', ')} could not be dropped`);
      await rm(workDir, { recursive: true, force: true });
    });

    // The parent QEMU opens the fleecing image and creates the NBD socket itself: as its own uid.
    const parentIdentity = await processIdentity(pre.inventory.pid);
    const parentOwner = parentIdentity.uid === 0 ? undefined : { uid: parentIdentity.uid, gid: parentIdentity.gid };
    const spaceReserveBytes = spaceReserveMiB(options.spaceReserveMiB) * 1024 * 1024;
    const snapshots: DiskSnapshot[] = [];
    for (const disk of pre.inventory.disks) {
      // A backend journals what it is about to add to the parent (nodes, exports, files) before
      // adding it, through `record`; the job persists it as this disk's entry (TEAM.md interface 5).
      const backendContext = (backend: string): DiskBackendContext => ({
        parent: pre.parent,
        workDir,
        jobId: job,
        log: phaseLog,
        spaceReserveBytes,
        ...(parentOwner ? { parentOwner } : {}),
        record: (additions) => journal.recordDisk(diskAdditions(disk.id, backend, additions)),
      });
      const made = await prepareDiskSnapshot(disk, backendContext, options.diskBackend ?? 'auto', pre.strategy.name, signal);
      await journal.update((entry) => ({ tempFiles: [...entry.tempFiles, ...made.tempFiles] }));
      await journal.recordDisk(diskAdditions(disk.id, made.backend, made.journal));
      // A view that had to be broken (its storage running low) fails the job; the guest goes on.
      const unwatch = made.watch?.((why) => context.breakJob(new ForksnapError('NO_SPACE', `the disk snapshot of ${disk.id} was broken to protect the VM: ${why}`, { vm: context.vm, disk: disk.id })));
      if (unwatch) undo.push(`stop watching the free space for ${disk.id}`, unwatch);
      undo.push(`discard the disk snapshot of ${disk.id}`, async () => {
        try {
          await made.discard();
        } catch (error) {
          undropped.add(disk.id);
          throw error;
        }
      });
      snapshots.push(made);
    }

    const childDisks = new Map<string, ChildDisk>(snapshots.map((snapshot) => [snapshot.disk.id, snapshot.child]));
    // The child is confined like the parent: same uid/gid/groups (or the same -runas), same
    // -sandbox and -chroot; the files it opens are handed to that identity.
    const credentials = await childCredentials(pre.inventory.pid, pre.inventory.commandLine);
    await grantTo(credentials, workDir, ...snapshots.map((snapshot) => snapshot.child.path));
    const chrooted = pre.inventory.commandLine.options.some((option) => option.name === 'chroot');
    const argv = buildChildArgv(pre.inventory, childDisks, childQmpSocket, { ...(chrooted ? { incoming: migrationUri } : {}), ...(pre.strategy.childCapabilities ? { capabilities: pre.strategy.childCapabilities } : {}) });
    const slot = new ChildSlot(argvAs(argv, credentials), childQmpSocket, migrationUri, log.child({ role: 'child' }), (pid) =>
      /* pid AND start time: recovery never signals a process that merely reuses the pid */ pidIdentity(pid).then(
        (child) => journal.update(() => ({ childPid: pid, childArgv0: pre.inventory.exe, child })),
        () => journal.update(() => ({ childPid: pid, childArgv0: pre.inventory.exe })),
      ), chrooted);
    // Always: on success the child is gone already and this does nothing; a child that will not
    // die fails this step, so the journal is kept.
    undo.push('stop the child QEMU', () => slot.stop());
    await slot.start(pre.parent, signal, { verify: true });

    const migrationSettings = new ParentMigrationSettings(pre.parent, { 'max-bandwidth': options.maxBandwidth ?? FAST_BANDWIDTH, ...pre.strategy.parameters }, log, (original) => journal.update(() => ({ migrationSettings: original })));
    undo.push('restore parent migration settings', () => migrationSettings.restore());
    await migrationSettings.apply(pre.strategy.capabilities, signal);
    // Last before the halt: fork() copies the page tables, so guest RAM an earlier snapshot split
    // into 4 KiB pages is collapsed back into huge pages now, while the guest runs.
    const hugePages = FORKING_STRATEGIES.includes(pre.strategy.name) ? await collapseGuestRam(pre.inventory.pid, phaseLog, signal) : undefined;
    return { workDir, migrationUri, snapshots, slot, migrationSettings, ...(hugePages ? { hugePages } : {}) };
  });
}

/**
 * reflink where the filesystem has it (unless fleecing is asked for), else fleecing: a
 * copy-before-write view in the parent QEMU; the parent never leaves its own files.
 * `qcow2-overlay` (the backend that moved the parent onto a temporary overlay and merged it back)
 * is accepted as an alias of fleecing, so existing scripts keep working.
 */
async function prepareDiskSnapshot(disk: ParentDisk, backendContext: (backend: string) => DiskBackendContext, wanted: string, strategy: string, signal: AbortSignal): Promise<DiskSnapshot> {
  const fleecingWanted = wanted === 'fleecing' || wanted === 'qcow2-overlay';
  const snapshot = fleecingWanted ? undefined : await reflinkBackend.prepare(disk, backendContext(reflinkBackend.name), signal);
  if (snapshot) return snapshot;
  if (wanted === 'reflink') {
    throw new ForksnapError('DISK_BACKEND_UNSUPPORTED', `disk ${disk.id} (${disk.file}) is not on a filesystem with reflink support (XFS with reflink=1, btrfs); use --disk-backend auto or fleecing`, { disk: disk.id, file: disk.file });
  }
  if (FLEECING_INCOMPATIBLE_STRATEGIES.includes(strategy)) {
    // QEMU inactivates every block node when a migration completes, which the copy-before-write
    // filter (it holds WRITE on its target) makes fail: precopy and fleecing cannot be combined.
    throw new ForksnapError('DISK_BACKEND_UNSUPPORTED', `disk ${disk.id} (${disk.file}) needs the fleecing backend (its filesystem has no reflink), which the ${strategy} strategy cannot use: QEMU inactivates all block nodes at the end of a migration and the copy-before-write filter holds its target writable; use fork or background-snapshot, or keep the disk on XFS with reflink=1 / btrfs`, { disk: disk.id, strategy });
  }
  const fleece = await fleecingBackend.prepare(disk, backendContext(fleecingBackend.name), signal);
  if (!fleece) throw new ForksnapError('DISK_BACKEND_UNSUPPORTED', `no disk backend can snapshot ${disk.id} (${disk.file})`, { disk: disk.id });
  return fleece;
}

/** Linux's limit for a UNIX socket path (sun_path, 108 bytes with the terminating NUL). */
const UNIX_PATH_MAX = 107;

/**
 * The child's QMP and migration sockets and the fleecing NBD socket live in the job's work dir: a
 * state directory so deep that they do not fit would fail inside QEMU with a cryptic message.
 */
function refuseLongSocketPaths(workDir: string, stateDir: string): void {
  const longest = path.join(workDir, 'fleecing', 'nbd.sock');
  if (Buffer.byteLength(longest) > UNIX_PATH_MAX) {
    throw new ForksnapError('INVALID_INPUT', `the state directory is too deep for the job's UNIX sockets: ${longest} is ${Buffer.byteLength(longest)} bytes, the limit is ${UNIX_PATH_MAX}; use a shorter FORKSNAP_STATE_DIR / --state-dir (at most ${UNIX_PATH_MAX - (Buffer.byteLength(longest) - Buffer.byteLength(stateDir))} bytes)`, { workDir, socket: longest });
  }
}

/** A backend's DiskJournal as the job journal's entry for that disk. */
function diskAdditions(disk: string, backend: string, journal: DiskJournal): DiskAdditions {
  return {
    disk,
    backend,
    files: [...journal.files],
    ...(journal.nodes ? { nodes: [...journal.nodes] } : {}),
    ...(journal.jobs ? { jobs: [...journal.jobs] } : {}),
    ...(journal.exports ? { exports: [...journal.exports] } : {}),
    ...(journal.nbdServer !== undefined ? { nbdServer: journal.nbdServer } : {}),
    ...(journal.devices ? { devices: journal.devices.map((device) => ({ ...device })) } : {}),
  };
}
