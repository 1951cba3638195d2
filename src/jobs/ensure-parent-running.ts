import type { ZodType } from 'zod';
import type { Logger } from 'pino';
import { ForksnapError } from '../errors.js';
import { QmpClient } from '../qmp/client.js';
import { migrationInfo, statusInfo } from '../qmp/schemas.js';
import { sleep } from '../util/abort.js';
import { waitUntilMigrationFinalized } from '../forker/wait-for-migration.js';

const MIGRATION_ACTIVE = new Set(['setup', 'active', 'pre-switchover', 'device', 'cancelling', 'wait-unplug', 'postcopy-active', 'postcopy-paused', 'postcopy-recover']);
const RESUMABLE = new Set(['paused', 'postmigrate', 'finish-migrate', 'prelaunch', 'suspended']);

/**
 * The guarantee that the parent VM is never left paused: cancel a migration still in flight,
 * then `cont` unless it runs. `cont` after a completed migration also re-activates the block
 * devices QEMU inactivated for the destination. Never called on a VM that was not running when the
 * job began (preflight refuses those). Throws PARENT_RESUME_FAILED only if the VM cannot be resumed.
 */
export async function ensureParentRunning(parent: QmpClient | undefined, socket: string, log: Logger): Promise<void> {
  let qmp = parent;
  let own = false;
  if (!qmp || qmp.state !== 'ready') {
    qmp = await QmpClient.connect(socket, { log, timeoutMs: 5_000 }).catch((error: unknown) => {
      throw new ForksnapError('PARENT_RESUME_FAILED', `cannot reach the parent's QMP socket ${socket} to resume it: ${(error as Error).message}`, { socket }, { cause: error });
    });
    own = true;
  }
  const ask = <T>(command: string, schema?: ZodType<T>) => qmp!.execute(command, undefined, { schema, signal: AbortSignal.timeout(15_000) });
  try {
    const migration = await ask('query-migrate', migrationInfo);
    if (migration.status && MIGRATION_ACTIVE.has(migration.status)) {
      log.warn({ status: migration.status }, 'cancelling the parent migration still in flight');
      await ask('migrate_cancel').catch(() => {});
      for (let i = 0; i < 100; i++) {
        const info = await ask('query-migrate', migrationInfo);
        if (!info.status || !MIGRATION_ACTIVE.has(info.status)) break;
        await sleep(100);
      }
    }
    await waitUntilMigrationFinalized(qmp, AbortSignal.timeout(15_000));
    const status = await ask('query-status', statusInfo);
    if (status.running) return;
    if (!RESUMABLE.has(status.status)) {
      throw new ForksnapError('PARENT_RESUME_FAILED', `the parent VM is in state ${status.status} and cannot be resumed`, { status: status.status });
    }
    log.warn({ status: status.status }, 'resuming the parent VM');
    await ask('cont');
    const after = await ask('query-status', statusInfo);
    if (!after.running) throw new ForksnapError('PARENT_RESUME_FAILED', `the parent VM is still ${after.status} after cont`, { status: after.status });
  } catch (error) {
    if (error instanceof ForksnapError && error.code === 'PARENT_RESUME_FAILED') throw error;
    throw new ForksnapError('PARENT_RESUME_FAILED', `resuming the parent VM failed: ${(error as Error).message}`, {}, { cause: error });
  } finally {
    if (own) qmp.close();
  }
}
