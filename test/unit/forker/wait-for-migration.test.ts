import { describe, expect, it } from 'vitest';
import { waitForIncomingComplete, waitForMigrationStatus, waitUntilMigrationFinalized } from '../../../src/forker/wait-for-migration.js';
import { useFakeQmpPeers } from '../../helpers/fake-qmp-peers.js';

const { qmpWith, sleeper } = useFakeQmpPeers();

describe('waitForMigrationStatus', () => {
  it('polls until the status holds and reports RAM progress', async () => {
    const statuses = ['setup', 'active', 'active', 'completed'];
    const { qmp } = await qmpWith({ 'query-migrate': () => ({ return: { status: statuses.shift() ?? 'completed', ram: { transferred: 50, remaining: 50, total: 100 } } }) });
    const progress: number[] = [];
    const info = await waitForMigrationStatus(qmp, sleeper(), (status) => status === 'completed', { signal: AbortSignal.timeout(5000), intervalMs: 5, onProgress: (p) => progress.push(p.percent) });
    expect(info.status).toBe('completed');
    expect(progress.length).toBeGreaterThanOrEqual(3);
    expect(progress[0]).toBe(50);
  });

  it('fails with CAPTURE_FAILED and QEMU\'s reason when the migration fails', async () => {
    const { qmp } = await qmpWith({ 'query-migrate': { return: { status: 'failed', 'error-desc': 'Unable to write to socket' } } });
    await expect(waitForMigrationStatus(qmp, sleeper(), () => false, { signal: AbortSignal.timeout(5000) })).rejects.toMatchObject({ code: 'CAPTURE_FAILED', context: { migrationStatus: 'failed', errorDesc: 'Unable to write to socket' } });
  });

  it('fails with CAPTURE_FAILED when the child exits, even if the parent stops answering', async () => {
    const { qmp } = await qmpWith({ 'query-migrate': { noReply: true } });
    const child = sleeper();
    setTimeout(() => process.kill(child.pid, 'SIGKILL'), 50);
    await expect(waitForMigrationStatus(qmp, child, () => false, { signal: AbortSignal.timeout(5000) })).rejects.toMatchObject({ code: 'CAPTURE_FAILED', message: expect.stringMatching(/child QEMU exited/) });
  });

  it('rethrows a cancel as it is', async () => {
    const { qmp } = await qmpWith({ 'query-migrate': { return: { status: 'active' } } });
    const reason = new Error('Ctrl-C');
    const controller = new AbortController();
    setTimeout(() => controller.abort(reason), 30);
    await expect(waitForMigrationStatus(qmp, sleeper(), () => false, { signal: controller.signal, intervalMs: 5 })).rejects.toBe(reason);
  });
});

describe('waitForIncomingComplete and waitUntilMigrationFinalized', () => {
  it('the child has the state once its incoming migration completed; a failed load is CAPTURE_FAILED', async () => {
    const steps = ['active', 'completed'];
    const good = await qmpWith({ 'query-migrate': () => ({ return: { status: steps.shift() ?? 'completed' } }) });
    await expect(waitForIncomingComplete(good.qmp, sleeper(), AbortSignal.timeout(5000))).resolves.toBeUndefined();
    const bad = await qmpWith({ 'query-migrate': { return: { status: 'failed', 'error-desc': 'load of migration failed' } } });
    await expect(waitForIncomingComplete(bad.qmp, sleeper(), AbortSignal.timeout(5000))).rejects.toMatchObject({ code: 'CAPTURE_FAILED' });
  });

  it('waits while QEMU is still in finish-migrate', async () => {
    const statuses = ['finish-migrate', 'finish-migrate', 'postmigrate'];
    const { server, qmp } = await qmpWith({ 'query-status': () => ({ return: { running: false, status: statuses.shift() ?? 'postmigrate' } }) });
    await waitUntilMigrationFinalized(qmp, AbortSignal.timeout(5000));
    expect(server.commandsNamed('query-status')).toHaveLength(3);
  });
});
