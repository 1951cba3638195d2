import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { snapshotDisksAtHalt, type HaltUndo } from '../../../../src/jobs/phases/disk-snapshot.js';
import { QmpClient } from '../../../../src/qmp/client.js';
import type { DiskSnapshot } from '../../../../src/snapshot/disk-backend.js';
import { FakeQmpServer } from '../../../helpers/fake-qmp-server.js';

/** The disk-snapshot step (issue 9's integration point): one QMP transaction for all disks, then each commitAtHalt. */
const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function fakeSnapshot(id: string, trail: string[], actions?: { type: string; data: object }[]): DiskSnapshot {
  return {
    backend: 'reflink',
    disk: { id } as DiskSnapshot['disk'],
    child: { path: `/x/${id}`, format: 'qcow2' },
    tempFiles: [],
    ...(actions ? { haltActions: () => actions } : {}),
    async commitAtHalt() {
      trail.push(`commit ${id}`);
      return { undo: async () => void trail.push(`undo ${id}`) };
    },
    async keepCrashImage() {
      trail.push(`crash image ${id}`);
    },
    async materialise() {},
    async finish() {},
    async discard() {},
  } as unknown as DiskSnapshot;
}

async function parent(transaction: Parameters<FakeQmpServer['handle']>[1]): Promise<{ server: FakeQmpServer; qmp: QmpClient }> {
  const server = await FakeQmpServer.start({ handlers: { transaction } });
  cleanups.push(() => server.close());
  const qmp = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  cleanups.push(() => qmp.close());
  return { server, qmp };
}

describe('snapshotDisksAtHalt', () => {
  it('sends ONE transaction with every disk\'s halt actions, then commits each disk, then the crash images', async () => {
    const trail: string[] = [];
    const { server, qmp } = await parent(() => {
      trail.push('transaction');
      return { return: {} };
    });
    const a = { type: 'blockdev-backup', data: { device: 'a', target: 'fleece-a', sync: 'none' } };
    const b = { type: 'blockdev-backup', data: { device: 'b', target: 'fleece-b', sync: 'none' } };
    const undos: HaltUndo[] = [];
    await snapshotDisksAtHalt(qmp, [fakeSnapshot('a', trail, [a]), fakeSnapshot('r', trail), fakeSnapshot('b', trail, [b])], undos, { keepCrashImage: true, signal: AbortSignal.timeout(2000) });
    expect(server.commandsNamed('transaction')).toEqual([expect.objectContaining({ arguments: { actions: [a, b] } })]);
    expect(trail).toEqual(['transaction', 'commit a', 'commit r', 'commit b', 'crash image a', 'crash image r', 'crash image b']);
    expect(undos.map((u) => u.disk)).toEqual(['a', 'r', 'b']);
  });

  it('no halt actions: no transaction at all', async () => {
    const trail: string[] = [];
    const { server, qmp } = await parent({ return: {} });
    await snapshotDisksAtHalt(qmp, [fakeSnapshot('r', trail)], [], { keepCrashImage: false, signal: AbortSignal.timeout(2000) });
    expect(server.commandsNamed('transaction')).toEqual([]);
    expect(trail).toEqual(['commit r']);
  });

  it('a refused transaction is DISK_SNAPSHOT_FAILED naming the disks, and no disk is committed', async () => {
    const trail: string[] = [];
    const { qmp } = await parent({ error: { class: 'GenericError', desc: 'Node fleece-b not found' } });
    const undos: HaltUndo[] = [];
    await expect(snapshotDisksAtHalt(qmp, [fakeSnapshot('a', trail, [{ type: 'x', data: {} }]), fakeSnapshot('b', trail, [{ type: 'x', data: {} }])], undos, { keepCrashImage: false, signal: AbortSignal.timeout(2000) }))
      .rejects.toMatchObject({ code: 'DISK_SNAPSHOT_FAILED', context: { disks: ['a', 'b'] }, message: expect.stringMatching(/Node fleece-b not found/) });
    expect(trail).toEqual([]);
    expect(undos).toEqual([]);
  });
});
