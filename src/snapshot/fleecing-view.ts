import { rm } from 'node:fs/promises';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ForksnapError, errorMessage } from '../errors.js';
import type { QmpClient } from '../qmp/client.js';
import { QmpError } from '../qmp/errors.js';
import { blockInfoList } from '../qmp/schemas.js';
import type { DiskJournal } from './disk-backend.js';
import { generatedName } from './node-names.js';

/**
 * The QMP side of a fleecing view (QEMU 7.2), one disk:
 *
 *   guest device ──> [copy-before-write "cbw"] ──file──> source (the parent's own top node, unchanged)
 *                          └──target──> [qcow2 "tmp" on the fleecing image] ──backing──> source
 *   NBD export "exp" of tmp  <── the child's overlay (backing) and materialise read the frozen view
 *   [snapshot-access "acc"] on cbw: only for the integrity probe after materialise
 *
 * tmp and its export exist before the halt (tmp then reads through to the live source). At the halt
 * (VM stopped, I/O drained) the cbw filter is created and the device re-pointed at it (qom-set
 * drive): from then on every guest write first copies the old clusters into tmp (serialised against
 * readers of tmp, block-copy's fleecing mode), so tmp shows the disk as it was at the halt.
 *
 * on-cbw-error=break-snapshot: a failed or timed-out copy (fleecing filesystem full, I/O error)
 * lets the guest's write through and marks the snapshot broken. Reads of tmp do not see that mark
 * (they would silently show new data), reads through snapshot-access fail with EACCES: probeView
 * reads one sector through it after materialise, and a broken view fails the job.
 *
 * Everything here works from names only (a DiskJournal), so recovery on a new QMP connection uses
 * the same dropView. QEMU 7.2 facts this relies on are in /tmp/fs/C-findings.md (README).
 */
export const DEFAULT_CBW_TIMEOUT_S = 30;

export interface FleecingNames {
  /** qcow2 node on the fleecing image, backing = the source. */
  readonly tmp: string;
  readonly cbw: string;
  /** snapshot-access node, added only while probing. */
  readonly access: string;
  /** Block export id, also the NBD export name. */
  readonly exportId: string;
  /** Export of `access`, only while probing. */
  readonly probeExportId: string;
}

export function fleecingNames(jobId: string, diskId: string): FleecingNames {
  return {
    tmp: generatedName('fltmp', jobId, diskId),
    cbw: generatedName('flcbw', jobId, diskId),
    access: generatedName('flacc', jobId, diskId),
    exportId: generatedName('flexp', jobId, diskId),
    probeExportId: generatedName('flprb', jobId, diskId),
  };
}

/** query-block's `qdev` is the device id when it has one, else its canonical QOM path. */
export function qomPathOf(qdev: string): string {
  return qdev.startsWith('/') ? qdev : `/machine/peripheral/${qdev}`;
}

export function nbdUri(exportId: string, socket: string): string {
  return `nbd+unix:///${exportId}?socket=${socket}`;
}

const exportList = z.array(z.object({ id: z.string(), type: z.string(), 'node-name': z.string(), 'shutting-down': z.boolean() }));
const nodeList = z.array(z.object({ 'node-name': z.string() }).loose());

// ---------------------------------------------------------------- NBD server (one per QEMU)

/** NBD servers this process started, by parent connection (several disks of one job share one). */
const startedServers = new WeakMap<QmpClient, string>();

/**
 * Start the parent's NBD server on `socket`, or reuse the one this job started. QEMU runs at most
 * one NBD server, and `nbd-server-stop` deletes every NBD export: a server someone else started is
 * neither used (its clients could read our export; its address is not queryable) nor stopped.
 */
export async function startNbdServer(qmp: QmpClient, socket: string, log: Logger, signal: AbortSignal): Promise<'started' | 'ours'> {
  if (startedServers.get(qmp) === socket) return 'ours';
  try {
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } }, { signal });
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    if (error instanceof QmpError && /already running/i.test(error.message)) {
      throw new ForksnapError('DISK_BACKEND_UNSUPPORTED', 'the VM\'s QEMU already runs an NBD server (someone else\'s: QEMU has only one, and forksnap neither exposes the disk on it nor stops it); the fleecing disk backend needs its own. Stop that server or put the disk images on a filesystem with reflink support', {}, { cause: error });
    }
    throw error;
  }
  startedServers.set(qmp, socket);
  log.info({ socket }, 'started the parent\'s NBD server for the fleecing view');
  return 'started';
}

// ---------------------------------------------------------------- before the halt

export async function addFleecingNode(qmp: QmpClient, options: { node: string; file: string; backing: string }, signal: AbortSignal): Promise<void> {
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': options.node, file: { driver: 'file', filename: options.file }, backing: options.backing }, { signal });
}

export async function addExport(qmp: QmpClient, options: { id: string; node: string }, signal: AbortSignal): Promise<void> {
  await qmp.execute('block-export-add', { type: 'nbd', id: options.id, 'node-name': options.node, name: options.id, writable: false }, { signal });
}

// ---------------------------------------------------------------- at the halt

/**
 * Freeze the view: create the filter (the copy-before-write bitmap starts all set, so the instant
 * of its creation is the snapshot) and re-point the device at it. Only while the VM is stopped:
 * a guest write between the two commands would bypass the filter. Two QMP round trips per disk.
 */
export async function armCopyBeforeWrite(qmp: QmpClient, options: { cbw: string; source: string; target: string; qdev: string; timeoutS: number }, log: Logger, signal: AbortSignal): Promise<void> {
  // Both commands go out at once (this is parent downtime: one round trip instead of two). QMP
  // runs them in order, so the qom-set sees the filter if blockdev-add made it, and fails
  // harmlessly ("no node") if it did not.
  const [added, repointed] = await Promise.allSettled([
    qmp.execute('blockdev-add', { driver: 'copy-before-write', 'node-name': options.cbw, file: options.source, target: options.target, 'on-cbw-error': 'break-snapshot', 'cbw-timeout': options.timeoutS }, { signal }),
    qmp.execute('qom-set', { path: qomPathOf(options.qdev), property: 'drive', value: options.cbw }, { signal }),
  ]);
  if (added.status === 'rejected') throw added.reason;
  if (repointed.status === 'rejected') {
    await qmp.execute('blockdev-del', { 'node-name': options.cbw }).catch((deleteError: unknown) => {
      log.error({ node: options.cbw, err: errorMessage(deleteError) }, 'could not delete the copy-before-write filter after the device refused it');
    });
    throw repointed.reason;
  }
}

// ---------------------------------------------------------------- while the view lives

/** Serialises check-then-qom-set per connection: two concurrent detaches (the space watch and finish) would both see the filter and the second qom-set would abort QEMU. */
const detaching = new WeakMap<QmpClient, Promise<unknown>>();

/** Re-point the device at its own node if (and only if) its root is the filter. Returns whether it did. */
export async function detachFilter(qmp: QmpClient, device: { qdev: string; node: string; filter: string }, log: Logger, signal: AbortSignal): Promise<boolean> {
  const previous = detaching.get(qmp) ?? Promise.resolve();
  const mine = previous.catch(() => undefined).then(() => detachFilterNow(qmp, device, log, signal));
  detaching.set(qmp, mine);
  return mine;
}

async function detachFilterNow(qmp: QmpClient, device: { qdev: string; node: string; filter: string }, log: Logger, signal: AbortSignal): Promise<boolean> {
  const blocks = await qmp.execute('query-block', undefined, { signal, schema: blockInfoList });
  const block = blocks.find((entry) => entry.inserted?.['node-name'] === device.filter);
  if (!block) return false;
  // qom-set drive to the node the device already has aborts QEMU 7.2 (assertion old_bs != new_bs):
  // it is only sent while the root is the filter, checked just above.
  await qmp.execute('qom-set', { path: qomPathOf(block.qdev || device.qdev), property: 'drive', value: device.node }, { signal });
  log.info({ qdev: block.qdev || device.qdev, node: device.node, filter: device.filter }, 'device re-pointed at its own node (copy-before-write filter detached)');
  return true;
}

/**
 * True if no copy-before-write failed since the halt: one sector read through snapshot-access,
 * which fails (EACCES) once the snapshot is broken, for good. HMP `qemu-io` prints its result on
 * QEMU's stdout, not the monitor, so the read goes through a short-lived NBD export of the
 * snapshot-access node instead. False also when the filter is already gone.
 */
export async function probeView(qmp: QmpClient, names: Pick<FleecingNames, 'cbw' | 'access' | 'probeExportId'>, socket: string, log: Logger, signal: AbortSignal): Promise<{ intact: boolean; detail: string }> {
  try {
    await qmp.execute('blockdev-add', { driver: 'snapshot-access', 'node-name': names.access, file: names.cbw }, { signal });
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    return { intact: false, detail: `the copy-before-write filter is gone (${errorMessage(error)})` };
  }
  try {
    await addExport(qmp, { id: names.probeExportId, node: names.access }, signal);
    const result = await execa('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 512', nbdUri(names.probeExportId, socket)], { reject: false, all: true, cancelSignal: signal });
    if (signal.aborted) throw signal.reason;
    const output = String(result.all ?? '').trim();
    return { intact: result.exitCode === 0 && /^read 512\/512 bytes/m.test(output), detail: output.slice(-500) };
  } finally {
    await dropExports(qmp, [names.probeExportId], log, AbortSignal.timeout(15_000))
      .then(() => qmp.execute('blockdev-del', { 'node-name': names.access }))
      .catch((error: unknown) => log.warn({ node: names.access, err: errorMessage(error) }, 'could not remove the probe export/node (dropView removes them)'));
  }
}

// ---------------------------------------------------------------- drop

/**
 * Drop everything a DiskJournal names, in the order that works, each step logged and skipped when
 * already done (idempotent; for the job's finish/discard and for recovery on a new connection):
 * exports (hard: clients cut off) -> devices re-pointed at their own nodes -> nodes deleted ->
 * the NBD server stopped if this job started it and no NBD export is left -> files deleted.
 * Needs a working QMP connection; without one it throws and deletes nothing (the journal stays).
 */
export async function dropView(qmp: QmpClient, journal: DiskJournal, log: Logger, signal: AbortSignal): Promise<void> {
  const touchesQemu = (journal.nodes?.length ?? 0) + (journal.exports?.length ?? 0) + (journal.devices?.length ?? 0) > 0 || journal.nbdServer;
  if (touchesQemu) {
    if (qmp.state !== 'ready') {
      throw new ForksnapError('QMP_DISCONNECTED', `cannot drop the fleecing view: the parent's QMP connection is ${qmp.state}; recovery retries from the journal`, { nodes: journal.nodes, exports: journal.exports });
    }
    await dropExports(qmp, journal.exports ?? [], log, signal);
    for (const device of journal.devices ?? []) await detachFilter(qmp, device, log, signal);
    const present = new Set((await qmp.execute('query-named-block-nodes', { flat: true }, { signal, schema: nodeList })).map((node) => node['node-name']));
    for (const node of journal.nodes ?? []) {
      if (!present.has(node)) continue;
      await qmp.execute('blockdev-del', { 'node-name': node }, { signal });
      log.info({ node }, 'block node deleted');
    }
    if (journal.nbdServer) await stopNbdServerIfUnused(qmp, log, signal);
  }
  for (const file of journal.files) await rm(file, { force: true, recursive: true });
  if (journal.files.length > 0) log.info({ files: journal.files }, 'fleecing files deleted');
}

async function dropExports(qmp: QmpClient, ids: readonly string[], log: Logger, signal: AbortSignal): Promise<void> {
  if (ids.length === 0) return;
  const wanted = new Set(ids);
  const deadline = Date.now() + 10_000;
  for (let first = true; ; first = false) {
    const exports = (await qmp.execute('query-block-exports', undefined, { signal, schema: exportList })).filter((entry) => wanted.has(entry.id));
    if (exports.length === 0) return;
    for (const entry of exports) {
      if (entry['shutting-down']) continue;
      await qmp.execute('block-export-del', { id: entry.id, mode: 'hard' }, { signal });
      log.info({ export: entry.id }, 'NBD export deleted (clients disconnected)');
    }
    if (Date.now() > deadline) throw new ForksnapError('DISK_SNAPSHOT_FAILED', `the NBD exports ${exports.map((e) => e.id).join(', ')} did not go away within 10 s`, { exports: exports.map((e) => e.id) });
    if (!first) await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function stopNbdServerIfUnused(qmp: QmpClient, log: Logger, signal: AbortSignal): Promise<void> {
  const exports = (await qmp.execute('query-block-exports', undefined, { signal, schema: exportList })).filter((entry) => entry.type === 'nbd');
  if (exports.length > 0) {
    log.info({ exports: exports.map((e) => e.id) }, 'NBD server left running: it still has exports');
    return;
  }
  try {
    await qmp.execute('nbd-server-stop', undefined, { signal });
    log.info('stopped the NBD server this job started');
  } catch (error) {
    if (!(error instanceof QmpError && /not running/i.test(error.message))) throw error;
  }
  startedServers.delete(qmp);
}
