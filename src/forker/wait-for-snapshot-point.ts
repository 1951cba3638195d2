import { z } from 'zod';
import type { QmpClient } from '../qmp/client.js';
import { qemuAtLeast } from '../qemu/qemu-version.js';
import { sleep } from '../util/abort.js';
import type { StrategyName } from './strategy.js';

const ramCounters = z.object({
  status: z.string().optional(),
  ram: z.object({ 'dirty-sync-count': z.number().optional(), normal: z.number().optional(), duplicate: z.number().optional() }).optional(),
});

/**
 * For a parent that forksnap halted before `migrate`: resolves once QEMU has taken the snapshot
 * point (device state saved, copy-on-write armed) but, keeping the run state it found (paused, by
 * us), will not resume the guest itself. Who does what:
 *   - forksnap's patch series (patches/qemu-<base>/, fork): ram.dirty-sync-count becomes 1 when
 *     the forked process owns the copy; it is visible only once the run state is restored;
 *   - stock background-snapshot from QEMU 9.0 (bg_migration_vm_start_bh: vm_resume(old state)):
 *     RAM pages start to flow only after write-protection is armed and the resume bottom half is
 *     scheduled;
 *   - QEMU 7.2's background-snapshot and forksnap's first 7.2 patch resume by themselves (a RESUME
 *     event): this never resolves for them; the caller races it with that event.
 * Polls query-migrate every `intervalMs` (1 ms: each poll is a few µs of QEMU's main loop while
 * the guest is paused anyway; the interval is parent downtime); aborts with `signal`.
 */
export async function waitForSnapshotPoint(parent: QmpClient, strategy: StrategyName, signal: AbortSignal, intervalMs = 1): Promise<void> {
  const streamingCounts = strategy === 'background-snapshot' && parent.version !== undefined && qemuAtLeast(parent.version, 9, 0);
  for (;;) {
    const info = await parent.execute('query-migrate', undefined, { signal, schema: ramCounters });
    const ram = info.ram ?? {};
    if (info.status === 'active' || info.status === 'completed') {
      if ((ram['dirty-sync-count'] ?? 0) >= 1) return;
      if (streamingCounts && (ram.normal ?? 0) + (ram.duplicate ?? 0) > 0) return;
    }
    await sleep(intervalMs, signal);
  }
}

/**
 * Resume a parent QEMU left paused at the snapshot point (see waitForSnapshotPoint). One QMP
 * round trip first (orderingRoundTrip, default on): a bottom half QEMU scheduled before the point
 * became visible (10.0's background-snapshot restores the run state from one) runs before a
 * command that arrives after that round trip, so it cannot undo the `cont`. forksnap's fork
 * patches restore the run state before the point becomes visible: no round trip needed.
 */
export async function resumeAtSnapshotPoint(parent: QmpClient, signal: AbortSignal, options: { orderingRoundTrip?: boolean; beforeCont?: () => void } = {}): Promise<void> {
  if (options.orderingRoundTrip ?? true) await parent.execute('query-status', undefined, { signal });
  options.beforeCont?.();
  await parent.execute('cont', undefined, { signal });
}
