import type { z } from 'zod';
import { ForksnapError } from '../errors.js';
import type { QemuChildProcess } from '../qemu/child-process.js';
import type { QmpClient } from '../qmp/client.js';
import { migrationInfo, statusInfo, type MigrationInfo } from '../qmp/schemas.js';
import { sleep, withDeadline } from '../util/abort.js';

export interface TransferProgress {
  readonly bytes: number;
  readonly totalBytes: number;
  readonly percent: number;
}

const TERMINAL_FAILURES = new Set(['failed', 'cancelled']);

/**
 * Poll the parent's query-migrate until `until(status)` holds, reporting RAM transfer progress.
 * Fails with CAPTURE_FAILED when the migration fails or is cancelled, or when the child QEMU exits.
 */
export async function waitForMigrationStatus(
  parent: QmpClient,
  child: QemuChildProcess,
  until: (status: string) => boolean,
  options: { signal: AbortSignal; onProgress?: (progress: TransferProgress) => void; intervalMs?: number },
): Promise<MigrationInfo> {
  const childExit = child.exited.then((exit) => exit);
  // The parent's last word after the child died: unknown (undefined) if it does not answer in 1 s.
  const lastWord = (query: Promise<MigrationInfo>) => withDeadline(query, 1_000, () => undefined, options.signal).catch(() => {
    if (options.signal.aborted) throw options.signal.reason;
    return undefined;
  });
  const childDied = (exited: { exitCode: number | undefined; signal: string | undefined }, status?: string, errorDesc?: string) =>
    new ForksnapError('CAPTURE_FAILED', `the child QEMU exited during the transfer (${exited.exitCode ?? exited.signal}); parent migration status ${status ?? 'unknown'}${errorDesc ? `: ${errorDesc}` : ''}. Child output: ${child.outputTail.slice(-500)}`, { childExit: exited, migrationStatus: status, errorDesc });
  for (;;) {
    if (options.signal.aborted) throw options.signal.reason;
    // A parent whose migration thread is stuck may not answer: the child's death decides then.
    const query = parent.execute('query-migrate', undefined, { signal: options.signal, schema: migrationInfo });
    const answer = await Promise.race([query.then((info) => ({ info })), childExit.then((exited) => ({ exited }))]);
    if ('exited' in answer) {
      const last = await lastWord(query);
      if (last?.status && until(last.status)) return last;
      throw childDied(answer.exited, last?.status, last?.['error-desc']);
    }
    const info = answer.info;
    const status = info.status ?? 'none';
    if (info.ram && options.onProgress) {
      const total = info.ram.total || 1;
      const done = Math.min(total, total - info.ram.remaining);
      options.onProgress({ bytes: info.ram.transferred, totalBytes: info.ram.total, percent: Math.max(0, Math.min(100, (done / total) * 100)) });
    }
    if (until(status)) return info;
    if (TERMINAL_FAILURES.has(status)) {
      const exit = child.exit;
      const childNote = exit ? `; the child QEMU exited (${exit.exitCode ?? exit.signal}): ${child.outputTail.slice(-500)}` : '';
      throw new ForksnapError('CAPTURE_FAILED', `migration into the child ${status}: ${info['error-desc'] ?? 'no reason given'}${childNote}`, { migrationStatus: status, errorDesc: info['error-desc'], childExit: exit });
    }
    const exited = await withDeadline(childExit, options.intervalMs ?? 100, () => undefined, options.signal);
    if (exited) {
      // Give the parent a moment to notice the broken channel, then report both sides.
      const last = await lastWord(parent.execute('query-migrate', undefined, { signal: options.signal, schema: migrationInfo }));
      if (last?.status && until(last.status)) return last;
      throw childDied(exited, last?.status, last?.['error-desc']);
    }
  }
}

/** Wait until the child (the migration destination) has loaded the whole state. */
export async function waitForIncomingComplete(child: QmpClient, childProcess: QemuChildProcess, signal: AbortSignal): Promise<void> {
  for (;;) {
    if (signal.aborted) throw signal.reason;
    if (childProcess.exit) {
      throw new ForksnapError('CAPTURE_FAILED', `the child QEMU exited while loading the state (${childProcess.exit.exitCode ?? childProcess.exit.signal}): ${childProcess.outputTail.slice(-800)}`, { childExit: childProcess.exit });
    }
    const info = await child.execute('query-migrate', undefined, { signal, schema: migrationInfo }).catch((error: unknown) => {
      if (signal.aborted) throw signal.reason;
      throw new ForksnapError('CAPTURE_FAILED', `the child QEMU stopped answering while loading the state: ${(error as Error).message}. Child output: ${childProcess.outputTail.slice(-800)}`, {}, { cause: error });
    });
    if (info.status === 'completed') return;
    if (info.status && TERMINAL_FAILURES.has(info.status)) {
      throw new ForksnapError('CAPTURE_FAILED', `the child could not load the state: ${info['error-desc'] ?? info.status}`, { migrationStatus: info.status });
    }
    await sleep(50, signal);
  }
}

/**
 * fork-postcopy: wait until the child has loaded the device state and is ready to run (its
 * migration is postcopy-active and its run state has left `inmigrate`: paused, as it was started
 * with -S). Its RAM is not there yet: it faults it in from the parent's snapshot process.
 */
export async function waitForPostcopyDestination(child: QmpClient, childProcess: QemuChildProcess, signal: AbortSignal): Promise<void> {
  for (;;) {
    if (signal.aborted) throw signal.reason;
    if (childProcess.exit) {
      throw new ForksnapError('CAPTURE_FAILED', `the child QEMU exited while loading the device state (${childProcess.exit.exitCode ?? childProcess.exit.signal}): ${childProcess.outputTail.slice(-800)}`, { childExit: childProcess.exit });
    }
    const ask = <T>(command: string, schema: z.ZodType<T>) => child.execute(command, undefined, { signal, schema }).catch((error: unknown) => {
      if (signal.aborted) throw signal.reason;
      throw new ForksnapError('CAPTURE_FAILED', `the child QEMU stopped answering while loading the device state: ${(error as Error).message}. Child output: ${childProcess.outputTail.slice(-800)}`, {}, { cause: error });
    });
    const info = await ask('query-migrate', migrationInfo);
    if (info.status && TERMINAL_FAILURES.has(info.status)) {
      throw new ForksnapError('CAPTURE_FAILED', `the child could not load the state: ${info['error-desc'] ?? info.status}`, { migrationStatus: info.status });
    }
    if (info.status === 'postcopy-active' || info.status === 'completed') {
      const status = await ask('query-status', statusInfo);
      if (status.status !== 'inmigrate') return;
    }
    await sleep(5, signal);
  }
}

/**
 * After a migration completes, QEMU leaves the finish-migrate run state in a bottom half a moment
 * later; until then it refuses `cont`. Wait for that (at most 10 s).
 */
export async function waitUntilMigrationFinalized(qmp: QmpClient, signal: AbortSignal): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const status = await qmp.execute('query-status', undefined, { signal, schema: statusInfo });
    if (status.status !== 'finish-migrate') return;
    await sleep(50, signal);
  }
}
