import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { backgroundSnapshotStrategy } from '../../../src/forker/halt-then-migrate.js';
import { precopyStrategy } from '../../../src/forker/precopy.js';
import type { CaptureContext } from '../../../src/forker/strategy.js';
import { JobEventStream } from '../../../src/jobs/events.js';
import { PhaseRunner } from '../../../src/jobs/phase-runner.js';
import { QemuChildProcess } from '../../../src/qemu/child-process.js';
import { QmpClient } from '../../../src/qmp/client.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';
import { startFakeVm, type FakeVmState } from '../../helpers/fake-vm.js';

/**
 * The capture strategies against fake peers (a scripted parent and child QMP, a real tiny process
 * as the child): the order of their steps, that the disks are snapshotted while the parent is
 * paused, that events QEMU sends before a command's reply are not missed, and the downtime from
 * QEMU's own timestamps.
 */
const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function peers(script: (server: FakeQmpServer, state: FakeVmState, trail: string[]) => void) {
  const trail: string[] = [];
  const { server, state } = await startFakeVm();
  cleanups.push(() => server.close());
  script(server, state, trail);
  const childServer = await FakeQmpServer.start({ handlers: { 'query-migrate': { return: { status: 'completed' } } } });
  cleanups.push(() => childServer.close());
  const parent = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  const child = await QmpClient.connect(childServer.path, { log, timeoutMs: 2000 });
  cleanups.push(() => parent.close(), () => child.close());
  const childProcess = QemuChildProcess.spawn(['sleep', '100'], log);
  cleanups.push(() => childProcess.terminate(undefined, 500).then(() => undefined));
  const events = new JobEventStream('j');
  const phases = new PhaseRunner(events, log, new AbortController().signal, {});
  const resumed: number[] = [];
  const context: CaptureContext = {
    parent,
    child,
    childProcess,
    parentPid: process.pid,
    migrationUri: 'unix:/nonexistent',
    phases,
    timeouts: { haltMs: 2000, diskSnapshotMs: 2000, captureMs: 5000 },
    log,
    willHalt: () => trail.push('willHalt'),
    willMigrate: () => trail.push('willMigrate'),
    atHalt: async () => void trail.push(`atHalt while ${state.status}`),
    markWriteTrackingStale: async () => void trail.push('stale'),
    fallBackToBackgroundSnapshot: async () => {
      throw new Error('no fallback in this test');
    },
    parentResumed: (ms) => void resumed.push(ms),
  };
  const phaseOrder = () => events.history.filter((e) => e.type === 'phase-start').map((e) => (e as { phase: string }).phase);
  return { context, trail, phaseOrder, resumed, server, state };
}

describe('halt-then-migrate (background-snapshot)', () => {
  it('halt → disk-snapshot (parent paused) → capture; a RESUME sent before the migrate reply is seen; downtime from QEMU timestamps', async () => {
    const { context, trail, phaseOrder, resumed } = await peers((server, state, trail) => {
      server.handle('stop', () => {
        trail.push('stop');
        state.status = 'paused';
        server.emit('STOP', undefined, 1_000_000);
        return { return: {} };
      });
      server.handle('migrate', () => {
        trail.push('migrate');
        state.migration = 'active';
        state.status = 'running';
        server.emit('RESUME', undefined, 1_000_012.5); // before the reply, like QEMU's bottom half can
        state.migration = 'completed';
        return { return: {} };
      });
      server.handle('query-migrate', () => ({ return: { status: state.migration } }));
    });
    const result = await backgroundSnapshotStrategy.run(context);
    expect(phaseOrder()).toEqual(['halt', 'disk-snapshot', 'capture']);
    expect(trail).toEqual(['willHalt', 'stop', 'atHalt while paused', 'willMigrate', 'migrate']);
    expect(result).toMatchObject({ strategy: 'background-snapshot', haltedAtMs: 1_000_000, resumedAtMs: 1_000_012.5, downtimeMs: 12.5 });
    expect(resumed).toEqual([12.5]);
  });

  it('a failed migration fails the capture with CAPTURE_FAILED and marks write tracking stale', async () => {
    const { context, trail } = await peers((server, state) => {
      server.handle('migrate', () => {
        state.migration = 'failed';
        return { return: {} };
      });
      server.handle('query-migrate', () => ({ return: { status: state.migration, 'error-desc': 'channel broke' } }));
    });
    // No such pid: releasing the write protection fails, which is logged.
    await expect(backgroundSnapshotStrategy.run({ ...context, parentPid: 2 ** 22 + 1 })).rejects.toMatchObject({ code: 'CAPTURE_FAILED' });
    expect(trail).toContain('stale');
  });
});

describe('precopy', () => {
  it('capture → halt (QEMU stops at pre-switchover) → disk-snapshot (paused) → switchover; cont, RESUME, downtime', async () => {
    const { context, trail, phaseOrder, resumed } = await peers((server, state, trail) => {
      server.handle('migrate', () => {
        trail.push('migrate');
        state.migration = 'active';
        setTimeout(() => {
          state.status = 'paused';
          server.emit('STOP', undefined, 2_000_000);
          state.migration = 'pre-switchover';
        }, 30);
        return { return: {} };
      });
      server.handle('migrate-continue', () => {
        trail.push('migrate-continue');
        state.migration = 'completed';
        state.status = 'postmigrate';
        return { return: {} };
      });
      server.handle('query-migrate', () => ({ return: { status: state.migration } }));
      server.handle('cont', () => {
        trail.push('cont');
        state.status = 'running';
        server.emit('RESUME', undefined, 2_000_150);
        return { return: {} };
      });
    });
    const result = await precopyStrategy().run(context);
    expect(phaseOrder()).toEqual(['capture', 'halt', 'disk-snapshot', 'switchover']);
    expect(trail).toEqual(['willMigrate', 'willHalt', 'migrate', 'atHalt while paused', 'migrate-continue', 'cont']);
    expect(result).toMatchObject({ strategy: 'precopy', downtimeMs: 150 });
    expect(resumed).toEqual([150]);
  });
});
