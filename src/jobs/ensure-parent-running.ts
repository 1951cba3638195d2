import type { ZodType } from 'zod';
import type { Logger } from 'pino';
import { ForksnapError, errorMessage } from '../errors.js';
import { QmpClient } from '../qmp/client.js';
import { migrationInfo, statusInfo } from '../qmp/schemas.js';
import { sleep } from '../util/abort.js';
import { waitUntilMigrationFinalized } from '../forker/wait-for-migration.js';

const MIGRATION_ACTIVE = new Set(['setup', 'active', 'pre-switchover', 'device', 'cancelling', 'wait-unplug', 'postcopy-active', 'postcopy-paused', 'postcopy-recover']);
const RESUMABLE = new Set(['paused', 'postmigrate', 'finish-migrate', 'prelaunch', 'suspended']);

/** What forksnap itself did to the parent: only that is undone. */
export interface ParentIntent {
  /** forksnap paused the parent (or its migration did) and nobody paused it again since. */
  readonly pausedByUs: boolean;
  /** The migration in flight, if any, is forksnap's. */
  readonly ownsMigration: boolean;
}

export type ParentOutcome = 'resumed' | 'was-running' | 'left-paused';

/**
 * The guarantee that the parent VM is never left paused by forksnap: cancel forksnap's own
 * migration if still in flight, then `cont` if forksnap paused it. `cont` after a completed
 * migration also re-activates the block devices QEMU inactivated for the destination. A VM paused
 * by someone else, or a migration someone else started, is left alone ('left-paused').
 * Throws PARENT_RESUME_FAILED only if forksnap paused the VM and it cannot be resumed.
 */
/** A way to reach the parent again when the job's connection dropped: a QMP socket path, or a function (a libvirt domain, src/vm/vm-qmp.ts). */
export type ParentReconnect = string | (() => Promise<{ readonly qmp: QmpClient; close(): void }>);

export async function ensureParentRunning(parent: QmpClient | undefined, reconnect: ParentReconnect, log: Logger, intent: ParentIntent): Promise<ParentOutcome> {
  let qmp = parent;
  let release: (() => void) | undefined;
  if (!qmp || qmp.state !== 'ready') {
    const where = typeof reconnect === 'string' ? reconnect : 'the parent';
    const connection = await (typeof reconnect === 'string' ? QmpClient.connect(reconnect, { log, timeoutMs: 5_000 }).then((client) => ({ qmp: client, close: () => client.close() })) : reconnect()).catch((error: unknown) => {
      throw new ForksnapError('PARENT_RESUME_FAILED', `cannot reach ${where} over QMP to resume it: ${errorMessage(error)}`, { socket: typeof reconnect === 'string' ? reconnect : undefined }, { cause: error });
    });
    qmp = connection.qmp;
    release = () => connection.close();
  }
  const ask = <T>(command: string, schema?: ZodType<T>) => qmp!.execute(command, undefined, { schema, signal: AbortSignal.timeout(15_000) });
  try {
    const migration = await ask('query-migrate', migrationInfo);
    if (migration.status && MIGRATION_ACTIVE.has(migration.status)) {
      if (intent.ownsMigration) {
        log.warn({ status: migration.status }, 'cancelling forksnap\'s parent migration still in flight');
        await ask('migrate_cancel').catch((error: unknown) => log.warn({ err: errorMessage(error) }, 'migrate_cancel refused; waiting for the migration to end anyway'));
        for (let i = 0; i < 100; i++) {
          const info = await ask('query-migrate', migrationInfo);
          if (!info.status || !MIGRATION_ACTIVE.has(info.status)) break;
          await sleep(100);
        }
      } else {
        log.warn({ status: migration.status }, 'a migration forksnap did not start is in flight; leaving it alone');
      }
    }
    if (intent.ownsMigration) await waitUntilMigrationFinalized(qmp, AbortSignal.timeout(15_000));
    const status = await ask('query-status', statusInfo);
    if (status.running) return 'was-running';
    if (!intent.pausedByUs) {
      log.warn({ status: status.status }, 'the parent VM is paused, but not by forksnap (or paused again by someone since); leaving it paused');
      return 'left-paused';
    }
    if (!RESUMABLE.has(status.status)) {
      throw new ForksnapError('PARENT_RESUME_FAILED', `the parent VM is in state ${status.status} and cannot be resumed`, { status: status.status });
    }
    log.warn({ status: status.status }, 'resuming the parent VM');
    await ask('cont');
    const after = await ask('query-status', statusInfo);
    if (!after.running) throw new ForksnapError('PARENT_RESUME_FAILED', `the parent VM is still ${after.status} after cont`, { status: after.status });
    return 'resumed';
  } catch (error) {
    if (error instanceof ForksnapError && error.code === 'PARENT_RESUME_FAILED') throw error;
    throw new ForksnapError('PARENT_RESUME_FAILED', `resuming the parent VM failed: ${errorMessage(error)}`, {}, { cause: error });
  } finally {
    release?.();
  }
}
