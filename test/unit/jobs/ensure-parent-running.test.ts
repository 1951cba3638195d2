import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ensureParentRunning } from '../../../src/jobs/ensure-parent-running.js';
import { ParentRunWatch } from '../../../src/jobs/parent-run-watch.js';
import { QmpClient } from '../../../src/qmp/client.js';
import type { FakeQmpServer } from '../../helpers/fake-qmp-server.js';
import { startFakeVm, type FakeVmState } from '../../helpers/fake-vm.js';

const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function vm(initial: Partial<FakeVmState>): Promise<{ server: FakeQmpServer; state: FakeVmState; qmp: QmpClient }> {
  const { server, state } = await startFakeVm(initial);
  cleanups.push(() => server.close());
  const qmp = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  cleanups.push(() => qmp.close());
  return { server, state, qmp };
}

const sent = (server: FakeQmpServer) => server.received.map((command) => command.execute).filter((name) => name !== 'qmp_capabilities');

describe('ensureParentRunning', () => {
  it("leaves a running VM alone: 'was-running', no cont", async () => {
    const { server, qmp } = await vm({ status: 'running' });
    await expect(ensureParentRunning(qmp, server.path, log, { pausedByUs: true, ownsMigration: true })).resolves.toBe('was-running');
    expect(sent(server)).not.toContain('cont');
  });

  it("resumes a VM forksnap paused: 'resumed'", async () => {
    const { server, state, qmp } = await vm({ status: 'paused' });
    await expect(ensureParentRunning(qmp, server.path, log, { pausedByUs: true, ownsMigration: false })).resolves.toBe('resumed');
    expect(state.status).toBe('running');
    expect(sent(server)).toContain('cont');
  });

  it("never resumes a VM someone else paused: 'left-paused'", async () => {
    const { server, state, qmp } = await vm({ status: 'paused' });
    await expect(ensureParentRunning(qmp, server.path, log, { pausedByUs: false, ownsMigration: false })).resolves.toBe('left-paused');
    expect(state.status).toBe('paused');
    expect(sent(server)).not.toContain('cont');
  });

  it('cancels only its own migration', async () => {
    const foreign = await vm({ status: 'running', migration: 'active' });
    await expect(ensureParentRunning(foreign.qmp, foreign.server.path, log, { pausedByUs: false, ownsMigration: false })).resolves.toBe('was-running');
    expect(sent(foreign.server)).not.toContain('migrate_cancel');
    expect(foreign.state.migration).toBe('active');

    const ours = await vm({ status: 'paused', migration: 'active' });
    await expect(ensureParentRunning(ours.qmp, ours.server.path, log, { pausedByUs: true, ownsMigration: true })).resolves.toBe('resumed');
    expect(sent(ours.server)).toEqual(expect.arrayContaining(['migrate_cancel', 'cont']));
    expect(sent(ours.server).indexOf('migrate_cancel')).toBeLessThan(sent(ours.server).indexOf('cont'));
  });

  it('connects by itself when the job has no usable connection, and closes that connection', async () => {
    const { server, state } = await vm({ status: 'paused' });
    await expect(ensureParentRunning(undefined, server.path, log, { pausedByUs: true, ownsMigration: false })).resolves.toBe('resumed');
    expect(state.status).toBe('running');
  });

  it('fails with PARENT_RESUME_FAILED for a paused VM forksnap paused that will not resume', async () => {
    const { server, qmp } = await vm({ status: 'paused' });
    server.handle('cont', { error: { class: 'GenericError', desc: 'Migration is not finalized yet' } });
    await expect(ensureParentRunning(qmp, server.path, log, { pausedByUs: true, ownsMigration: false })).rejects.toMatchObject({ code: 'PARENT_RESUME_FAILED' });
  });
});

describe('ParentRunWatch: is the pause still forksnap\'s?', () => {
  async function until(condition: () => boolean): Promise<void> {
    const deadline = Date.now() + 2000;
    while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(condition()).toBe(true);
  }

  it('our stop → ours; QEMU resumes → released; someone pauses again → not ours, so the undo leaves it paused', async () => {
    const { server, state, qmp } = await vm({ status: 'running' });
    const watch = new ParentRunWatch(qmp, log);
    cleanups.push(() => watch.close());
    expect(watch.intent).toEqual({ pausedByUs: false, ownsMigration: false });
    watch.willHalt();
    watch.willMigrate();
    await qmp.execute('stop');
    await until(() => watch.state === 'halted-by-us');
    expect(watch.intent).toEqual({ pausedByUs: true, ownsMigration: true });
    // QEMU resumes the parent by itself once copy-on-write is armed.
    state.status = 'running';
    server.emit('RESUME');
    await until(() => watch.state === 'released');
    // The user pauses the VM mid-job.
    state.status = 'paused';
    server.emit('STOP');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(watch.intent.pausedByUs).toBe(false);
    await expect(ensureParentRunning(qmp, server.path, log, watch.intent)).resolves.toBe('left-paused');
    expect(state.status).toBe('paused');
  });

  it('a failure while halted resumes the parent', async () => {
    const { server, state, qmp } = await vm({ status: 'running' });
    const watch = new ParentRunWatch(qmp, log);
    cleanups.push(() => watch.close());
    watch.willHalt();
    await qmp.execute('stop');
    await until(() => watch.state === 'halted-by-us');
    await expect(ensureParentRunning(qmp, server.path, log, watch.intent)).resolves.toBe('resumed');
    expect(state.status).toBe('running');
  });
});
