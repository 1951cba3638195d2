import { describe, expect, it } from 'vitest';
import { ParentPostcopyTail } from '../../../src/forker/postcopy-tail.js';
import { waitForPostcopyDestination } from '../../../src/forker/wait-for-migration.js';
import { useFakeQmpPeers } from '../../helpers/fake-qmp-peers.js';

const { log, cleanups, qmpWith, sleeper } = useFakeQmpPeers();

const MiB = 1048576;
const ram = (extra: Record<string, number> = {}) => ({ transferred: 9 * MiB, remaining: 200 * MiB, total: 256 * MiB, normal: 2000, duplicate: 250, 'page-size': 4096, 'postcopy-requests': 2227, ...extra });

describe('ParentPostcopyTail (fork-postcopy: the parent\'s snapshot process serving the child)', () => {
  it('failed rejects with CAPTURE_FAILED and QEMU\'s reason as soon as the parent\'s migration fails', async () => {
    const statuses = ['active', 'active', 'failed'];
    const { qmp } = await qmpWith({ 'query-migrate': () => ({ return: { status: statuses.shift() ?? 'failed', 'error-desc': 'x-fork-snapshot: the snapshot process (pid 7) was killed by signal 9 (Killed)', ram: ram() } }) });
    const tail = new ParentPostcopyTail(qmp, sleeper(), log, { intervalMs: 5 });
    cleanups.push(() => tail.close());
    await expect(tail.failed).rejects.toMatchObject({ code: 'CAPTURE_FAILED', message: expect.stringMatching(/snapshot process.*killed by signal 9/), context: { migrationStatus: 'failed' } });
  });

  it('end: once the child is gone the migration completes; what was never sent is the total less the pages sent', async () => {
    const statuses = ['active', 'completed'];
    const { qmp } = await qmpWith({ 'query-migrate': () => ({ return: { status: statuses.shift() ?? 'completed', ram: ram({ remaining: 0 }) } }) });
    const tail = new ParentPostcopyTail(qmp, sleeper(), log, { intervalMs: 5 });
    const stats = await tail.end(AbortSignal.timeout(5000));
    expect(stats).toEqual({ requests: 2227, transferredBytes: 9 * MiB, unsentBytes: 256 * MiB - 2250 * 4096, totalBytes: 256 * MiB, ended: 'completed' });
  });

  it('end: a snapshot process that does not end is cancelled (migrate_cancel), and says so', async () => {
    let cancelled = false;
    const { qmp, server } = await qmpWith({
      'query-migrate': () => ({ return: { status: cancelled ? 'cancelled' : 'active', ram: ram() } }),
      migrate_cancel: () => {
        cancelled = true;
        return { return: {} };
      },
    });
    const tail = new ParentPostcopyTail(qmp, sleeper(), log, { intervalMs: 5, endTimeoutMs: 100 });
    const stats = await tail.end(AbortSignal.timeout(5000));
    expect(server.received.map((command) => command.execute)).toContain('migrate_cancel');
    expect(stats.ended).toBe('cancelled after the child was gone');
  });

  it('close stops the watch: a later failure rejects nothing', async () => {
    let status = 'active';
    const { qmp } = await qmpWith({ 'query-migrate': () => ({ return: { status, ram: ram() } }) });
    const tail = new ParentPostcopyTail(qmp, sleeper(), log, { intervalMs: 5 });
    tail.close();
    status = 'failed';
    const settled = await Promise.race([tail.failed.then(() => 'resolved', () => 'rejected'), new Promise((resolve) => setTimeout(() => resolve('pending'), 100))]);
    expect(settled).toBe('pending');
  });
});

describe('waitForPostcopyDestination', () => {
  it('waits until the child is postcopy-active and has left inmigrate', async () => {
    const migrate = ['active', 'postcopy-active', 'postcopy-active'];
    const runstate = ['inmigrate', 'paused'];
    const { qmp } = await qmpWith({
      'query-migrate': () => ({ return: { status: migrate.shift() ?? 'postcopy-active' } }),
      'query-status': () => ({ return: { status: runstate.shift() ?? 'paused', running: false } }),
    });
    await waitForPostcopyDestination(qmp, sleeper(), AbortSignal.timeout(5000));
    expect(migrate).toEqual([]);
    expect(runstate).toEqual([]);
  });

  it('fails with the child\'s reason when it cannot load the state', async () => {
    const { qmp } = await qmpWith({ 'query-migrate': { return: { status: 'failed', 'error-desc': 'postcopy: userfaultfd not available' } } });
    await expect(waitForPostcopyDestination(qmp, sleeper(), AbortSignal.timeout(5000))).rejects.toMatchObject({ code: 'CAPTURE_FAILED', message: expect.stringMatching(/userfaultfd not available/) });
  });
});
