import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { resumeAtSnapshotPoint, waitForSnapshotPoint } from '../../../src/forker/wait-for-snapshot-point.js';
import { QmpClient } from '../../../src/qmp/client.js';
import { FakeQmpServer, type FakeQmpServerOptions } from '../../helpers/fake-qmp-server.js';

const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function qmpWith(options: FakeQmpServerOptions): Promise<{ server: FakeQmpServer; qmp: QmpClient }> {
  const server = await FakeQmpServer.start(options);
  cleanups.push(() => server.close());
  const qmp = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  cleanups.push(() => qmp.close());
  return { server, qmp };
}

const greeting = (major: number, minor: number) => ({ QMP: { version: { qemu: { major, minor, micro: 0 }, package: '' }, capabilities: ['oob'] } });

/** query-migrate answers in turn, the last one repeated. */
function answers(...infos: object[]) {
  return () => ({ return: infos.length > 1 ? infos.shift()! : infos[0]! });
}

describe('waitForSnapshotPoint', () => {
  it('fork (the patch series): the point is taken when ram.dirty-sync-count becomes 1', async () => {
    const { server, qmp } = await qmpWith({ greeting: greeting(10, 0), handlers: { 'query-migrate': answers({ status: 'setup' }, { status: 'active', ram: { 'dirty-sync-count': 0, normal: 5 } }, { status: 'active', ram: { 'dirty-sync-count': 1 } }) } });
    await waitForSnapshotPoint(qmp, 'fork', AbortSignal.timeout(3000), 1);
    expect(server.commandsNamed('query-migrate')).toHaveLength(3);
  });

  it('background-snapshot from QEMU 9.0: RAM pages flowing mean the point is taken; before 9.0 QEMU resumes by itself, so never', async () => {
    const flowing = answers({ status: 'active', ram: { 'dirty-sync-count': 0, normal: 0, duplicate: 0 } }, { status: 'active', ram: { 'dirty-sync-count': 0, normal: 0, duplicate: 12 } });
    const recent = await qmpWith({ greeting: greeting(10, 0), handlers: { 'query-migrate': flowing } });
    await waitForSnapshotPoint(recent.qmp, 'background-snapshot', AbortSignal.timeout(3000), 1);
    const old = await qmpWith({ greeting: greeting(7, 2), handlers: { 'query-migrate': { return: { status: 'active', ram: { 'dirty-sync-count': 0, normal: 100, duplicate: 100 } } } } });
    await expect(waitForSnapshotPoint(old.qmp, 'background-snapshot', AbortSignal.timeout(200), 1)).rejects.toMatchObject({ name: 'TimeoutError' });
  });

  it('resumeAtSnapshotPoint: one round trip, then cont', async () => {
    const { server, qmp } = await qmpWith({ handlers: { 'query-status': { return: { status: 'paused', running: false } }, cont: { return: {} } } });
    await resumeAtSnapshotPoint(qmp, AbortSignal.timeout(3000));
    const order = server.received.map((command) => command.execute).filter((name) => name !== 'qmp_capabilities');
    expect(order).toEqual(['query-status', 'cont']);
  });

  it('resumeAtSnapshotPoint without the ordering round trip (fork): cont alone', async () => {
    const { server, qmp } = await qmpWith({ handlers: { cont: { return: {} } } });
    let marked = 0;
    await resumeAtSnapshotPoint(qmp, AbortSignal.timeout(3000), { orderingRoundTrip: false, beforeCont: () => marked++ });
    expect(server.received.map((command) => command.execute).filter((name) => name !== 'qmp_capabilities')).toEqual(['cont']);
    expect(marked).toBe(1);
  });
});
