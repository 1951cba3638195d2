import { ForksnapError } from '../errors.js';
import type { QemuChildProcess } from '../qemu/child-process.js';
import type { QmpClient } from '../qmp/client.js';
import { migrationInfo, type MigrationInfo } from '../qmp/schemas.js';
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
  for (;;) {
    if (options.signal.aborted) throw options.signal.reason;
    const info = await parent.execute('query-migrate', undefined, { signal: options.signal, schema: migrationInfo });
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
      await sleep(200, options.signal);
      const last = await parent.execute('query-migrate', undefined, { signal: options.signal, schema: migrationInfo }).catch(() => undefined);
      if (last?.status && until(last.status)) return last;
      throw new ForksnapError('CAPTURE_FAILED', `the child QEMU exited during the transfer (${exited.exitCode ?? exited.signal}); parent migration status ${last?.status ?? 'unknown'}${last?.['error-desc'] ? `: ${last['error-desc']}` : ''}. Child output: ${child.outputTail.slice(-500)}`, { childExit: exited, migrationStatus: last?.status });
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
