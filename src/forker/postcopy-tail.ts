import type { Logger } from 'pino';
import { ForksnapError, errorMessage } from '../errors.js';
import type { QemuChildProcess } from '../qemu/child-process.js';
import type { QmpClient } from '../qmp/client.js';
import { migrationInfo, type MigrationInfo } from '../qmp/schemas.js';
import { sleep } from '../util/abort.js';
import type { PostcopyStats, PostcopyTail } from './strategy.js';

const FAILED = new Set(['failed', 'cancelled']);

/**
 * fork-postcopy after the capture: the child runs on the device state while the parent's snapshot
 * process (the forked streamer) answers its page faults. The parent's migration stays `active`
 * until the streamer ends: it ends when the child closes the channel (the child's QEMU exited after
 * the guest powered off, or was stopped), or when every page was pushed and the child said so.
 *
 * - `failed` rejects within one poll (`intervalMs`) of the parent's migration turning `failed` or
 *   `cancelled`: the streamer died, and the child's vCPUs wait for pages that will never come, so
 *   the job stops the child instead of waiting for its shutdown timeout;
 * - `end` is for after the child is gone: the streamer then sees the channel close and exits; if
 *   the migration is not over within `endTimeoutMs` the streamer is cancelled (migrate_cancel
 *   SIGKILLs it), so nothing of the snapshot outlives the job in the parent.
 */
export class ParentPostcopyTail implements PostcopyTail {
  readonly failed: Promise<never>;
  readonly #stop = new AbortController();

  constructor(
    private readonly parent: QmpClient,
    private readonly child: QemuChildProcess,
    private readonly log: Logger,
    private readonly options: { intervalMs?: number; endTimeoutMs?: number } = {},
  ) {
    this.failed = this.#watch();
    // Nobody may be listening when the job has already moved on (or failed for another reason).
    this.failed.catch(() => undefined);
  }

  async stats(signal: AbortSignal): Promise<PostcopyStats> {
    return statsOf(await this.parent.execute('query-migrate', undefined, { signal, schema: migrationInfo }));
  }

  async end(signal: AbortSignal): Promise<PostcopyStats> {
    this.close();
    const deadline = Date.now() + (this.options.endTimeoutMs ?? 15_000);
    let cancelled = false;
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const info = await this.parent.execute('query-migrate', undefined, { signal, schema: migrationInfo });
      if (info.status === 'completed') return statsOf(info, cancelled ? 'cancelled after the child was gone' : 'completed');
      if (info.status && FAILED.has(info.status)) return statsOf(info, cancelled ? 'cancelled after the child was gone' : `${info.status}: ${info['error-desc'] ?? 'no reason given'}`);
      if (!cancelled && Date.now() > deadline) {
        this.log.warn({ status: info.status }, 'the snapshot process did not end after the child was gone; cancelling it');
        await this.parent.execute('migrate_cancel', undefined, { signal }).catch((error: unknown) => {
          if (signal.aborted) throw signal.reason;
          this.log.warn({ err: errorMessage(error) }, 'migrate_cancel refused');
        });
        cancelled = true;
      }
      if (cancelled && Date.now() > deadline + 10_000) {
        throw new ForksnapError('CAPTURE_FAILED', `the parent's snapshot process did not end, even after migrate_cancel (migration status ${info.status})`, { migrationStatus: info.status });
      }
      await sleep(50, signal);
    }
  }

  close(): void {
    this.#stop.abort(new Error('postcopy tail closed'));
  }

  async #watch(): Promise<never> {
    const signal = this.#stop.signal;
    const interval = this.options.intervalMs ?? 100;
    for (;;) {
      let info: MigrationInfo;
      try {
        info = await this.parent.execute('query-migrate', undefined, { signal, schema: migrationInfo });
      } catch (error) {
        if (signal.aborted) return new Promise<never>(() => undefined);
        throw new ForksnapError('CAPTURE_FAILED', `the parent stopped answering while its snapshot process served the child's RAM: ${errorMessage(error)}`, {}, { cause: error });
      }
      if (info.status && FAILED.has(info.status)) {
        throw new ForksnapError('CAPTURE_FAILED', `the parent's snapshot process ended before the child's shutdown (migration ${info.status}: ${info['error-desc'] ?? 'no reason given'}); the child cannot get the rest of its RAM`, { migrationStatus: info.status, errorDesc: info['error-desc'] });
      }
      if (info.status === 'completed' && this.child.exit === undefined) {
        // Only a pushed-out stream completes while the child runs: the child has every page then.
        this.log.debug('the snapshot process pushed every page; the child holds all of its RAM');
        return new Promise<never>(() => undefined);
      }
      const stopped = await sleep(interval, signal).then(() => false, () => true);
      if (stopped) return new Promise<never>(() => undefined);
    }
  }
}

/**
 * The counters of the parent's query-migrate. `remaining` is gone once the migration completed (QEMU
 * frees its RAM state), so what was never sent is the total less the pages sent (normal and zero).
 */
function statsOf(info: MigrationInfo, ended?: string): PostcopyStats {
  const ram = info.ram;
  const pageSize = ram?.['page-size'] ?? 4096;
  const sentPages = (ram?.normal ?? 0) + (ram?.duplicate ?? 0);
  const total = ram?.total ?? 0;
  return {
    requests: ram?.['postcopy-requests'] ?? 0,
    transferredBytes: ram?.transferred ?? 0,
    unsentBytes: Math.max(0, total - sentPages * pageSize),
    totalBytes: total,
    ...(ended ? { ended } : {}),
  };
}
