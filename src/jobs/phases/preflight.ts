import { access } from 'node:fs/promises';
import path from 'node:path';
import { snapshotsDir, vmDir, workRoot } from '../../config.js';
import { checkSpace } from '../space-preflight.js';
import { ForksnapError, errorMessage, isForksnapError } from '../../errors.js';
import { chooseStrategy } from '../../forker/choose-strategy.js';
import type { CaptureStrategy } from '../../forker/strategy.js';
import { QmpClient } from '../../qmp/client.js';
import { blockJobInfoList, migrationInfo, statusInfo } from '../../qmp/schemas.js';
import { validateName } from '../../validate-name.js';
import { inspectVm, type VmInventory } from '../../vm/inspect.js';
import { loadVm } from '../../vm/registry.js';
import { isAlive } from '../../qemu/process-info.js';
import { describeEndpoint, endpointOf, openVmQmp, type QmpEndpoint, type VmQmp } from '../../vm/vm-qmp.js';
import type { ParentReconnect } from '../ensure-parent-running.js';
import { JobJournal } from '../journal.js';
import { processIdentity } from '../../qemu/process-info.js';
import { startSupervisor } from '../../supervisor/start-supervisor.js';
import { recoverInterruptedJobs } from '../recover-job.js';
import { defaultSnapshotId } from '../../snapshot/snapshot-id.js';
import { lockVm } from '../vm-lock.js';
import type { JobContext } from './job-context.js';

/**
 * Phase 1, preflight: refuse before anything is changed. Every refusal here leaves the VM exactly
 * as it was (exit 3, a precondition); a cancel comes out as the cancel, never as a refusal.
 * Ordering: earlier interrupted jobs on this VM are recovered before the lock is taken and the
 * journal opened; the journal exists before the first change (the lock is only a file).
 */
export interface Preflight {
  readonly snapshotId: string;
  readonly parentSocket: string;
  /** Reaches the parent again if the job's connection dropped (a socket, or libvirt). */
  readonly reconnectParent: ParentReconnect;
  readonly parent: QmpClient;
  readonly inventory: VmInventory;
  readonly strategy: CaptureStrategy;
  /** Marker file: QEMU 7.2's write-tracking flag is stale after a failed background snapshot. */
  readonly staleMarker: string;
}

export async function preflight(context: JobContext): Promise<Preflight> {
  const { options, vm, job, log, undo, paths } = context;
  return context.phases.run('preflight', context.timeouts.preflightMs, async ({ signal }) => {
    const record = await loadVm(paths, vm);
    const snapshotId = options.snapshotId ? validateName('snapshot', options.snapshotId) : await defaultSnapshotId(paths, vm);
    context.outcome.snapshotId = snapshotId;
    // A job on this VM whose process died left a journal: unwind it before anything else.
    for (const recovered of await recoverInterruptedJobs(paths, log, vm)) {
      log.warn(recovered, 'recovered an interrupted earlier job on this VM');
    }
    const unlock = await lockVm(paths, vm, job);
    undo.push('unlock VM', unlock);
    const journal = new JobJournal(paths, { job, vm, parentSocket: record.qmpSocket });
    // The dead-man's switch first: its first journal write names it. From here on, whatever kills
    // this process, the journal gets unwound.
    context.supervisor = await startSupervisor({ paths, job, log, journal, signal });
    context.journal = journal;
    context.events.subscribe((event) => {
      if (event.type !== 'phase-start') return;
      journal.update(() => ({ phase: event.phase })).catch((error: unknown) => {
        log.error({ err: errorMessage(error), phase: event.phase }, 'could not record the phase in the job journal');
      });
    });
    if (!record.pid) throw new ForksnapError('VM_NOT_RUNNING', `VM "${vm}" has no known QEMU pid; re-attach it with --pid`, { vm });
    if (!(await isAlive(record.pid))) throw new ForksnapError('VM_NOT_RUNNING', `VM "${vm}" is not running: its QEMU process ${record.pid} is gone`, { vm, pid: record.pid });
    const endpoint = endpointOf(record);
    const connection = await connectParent(endpoint, vm, context, signal);
    const parent = connection.qmp;
    undo.push('close parent QMP', () => connection.close());
    await refuseUnlessRunning(parent, vm, signal);
    const inventory = await inspectVm(record.pid, parent, signal);
    const parentIdentity = await processIdentity(record.pid);
    if (inventory.disks.length === 0) throw new ForksnapError('VM_NO_WRITABLE_DISK', `VM "${vm}" has no writable disk: there is nothing to snapshot`, { vm });
    // Space for the images in the store and the reserve on the fleecing storage, before anything starts.
    const space = await checkSpace({ disks: inventory.disks.map((disk) => ({ id: disk.id, file: disk.file })), storeDir: snapshotsDir(paths), fleecingDir: workRoot(paths), copies: options.keepCrashImage ? 2 : 1, reserveMiB: options.spaceReserveMiB, signal });
    log.info(space, 'space preflight passed');
    const staleMarker = path.join(vmDir(paths, vm), 'write-tracking-stale');
    const stale = await access(staleMarker).then(() => true, () => false);
    const requested = options.strategy ?? 'auto';
    const { strategy } = await chooseStrategy(parent, stale && requested === 'auto' ? 'background-snapshot' : requested, signal, record.pid, { backgroundPush: options.backgroundPush ?? 'off' });
    if (stale && strategy.name !== 'background-snapshot') {
      throw new ForksnapError('STRATEGY_UNSUPPORTED', `VM "${vm}": a failed background snapshot left QEMU 7.2's write-tracking flag set on the guest RAM (an upstream bug), so a ${strategy.name} capture would send a corrupt stream; take a background-snapshot (it resets the flag) or restart the VM`, { vm, strategy: strategy.name });
    }
    context.outcome.strategy = strategy.name;
    const version = parent.version ? `${parent.version.major}.${parent.version.minor}.${parent.version.micro}` : undefined;
    await journal.update(() => ({ parent: parentIdentity, strategy: strategy.name, ...(version ? { qemuVersion: version } : {}) }));
    const reconnectParent: ParentReconnect = endpoint.kind === 'socket' ? endpoint.path : () => openVmQmp(paths, vm, endpoint, { log, signal: AbortSignal.timeout(30_000) });
    return { snapshotId, parentSocket: record.qmpSocket, reconnectParent, parent, inventory, strategy, staleMarker };
  });
}

/**
 * The parent's QMP connection, for this job only (a Proxmox socket is busy while Proxmox asks:
 * retried briefly, then VM_BUSY); a cancel is rethrown as it is, anything else is VM_UNREACHABLE.
 */
async function connectParent(endpoint: QmpEndpoint, vm: string, context: JobContext, signal: AbortSignal): Promise<VmQmp> {
  try {
    return await openVmQmp(context.paths, vm, endpoint, { log: context.log, signal });
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    if (isForksnapError(error, 'VM_BUSY')) throw error;
    throw new ForksnapError('VM_UNREACHABLE', `VM "${vm}" does not answer on ${describeEndpoint(endpoint)}: ${errorMessage(error)}`, { vm, endpoint }, { cause: error });
  }
}

/** Refuse a VM that is not plainly running: paused by someone, migrating, or running block jobs. */
export async function refuseUnlessRunning(parent: QmpClient, vm: string, signal: AbortSignal): Promise<void> {
  const status = await parent.execute('query-status', undefined, { signal, schema: statusInfo });
  if (!status.running || status.status !== 'running') {
    throw new ForksnapError('VM_NOT_RUNNING', `VM "${vm}" is ${status.status}, not running: forksnap only snapshots a running VM (it would not know whether to resume it)`, { vm, status: status.status });
  }
  const migration = await parent.execute('query-migrate', undefined, { signal, schema: migrationInfo });
  if (migration.status && !['none', 'completed', 'failed', 'cancelled'].includes(migration.status)) {
    throw new ForksnapError('VM_BUSY', `VM "${vm}" is migrating (status ${migration.status}); try again when the migration is over`, { vm, migrationStatus: migration.status });
  }
  const jobs = await parent.execute('query-block-jobs', undefined, { signal, schema: blockJobInfoList });
  if (jobs.length > 0) {
    throw new ForksnapError('VM_BUSY', `VM "${vm}" has block jobs running (${jobs.map((j) => `${j.type} ${j.device}`).join(', ')}); they would write during the snapshot`, { vm, blockJobs: jobs });
  }
}
