import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { JobEventStream, type JobEvent } from '../../../src/jobs/events.js';
import { runSnapshotJob } from '../../../src/jobs/snapshot-job.js';
import { saveVm } from '../../../src/vm/registry.js';
import { startFakeVm } from '../../helpers/fake-vm.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

/**
 * The job's preflight against fake peers (a VM record in a temporary state dir, a scripted QMP
 * parent): refusals with their own codes, a cancel that stays a cancel, and job-failed carrying
 * the result shape, with the clean-up (lock, journal) done.
 */
const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function state(qmpSocket: string): Promise<TempPaths> {
  const temp = await tempPaths();
  cleanups.push(() => temp.cleanup());
  await saveVm(temp.paths, { name: 'vm1', origin: 'attached', qmpSocket, pid: process.pid, disks: [], createdAt: new Date().toISOString() });
  return temp;
}

async function run(temp: TempPaths, signal: AbortSignal): Promise<{ error: ForksnapError; events: JobEvent[] }> {
  const events = new JobEventStream('job1');
  const error = await runSnapshotJob({ vm: 'vm1', jobId: 'job1', snapshotId: 's1', paths: temp.paths, log, signal, events }).then(
    () => {
      throw new Error('expected the job to fail');
    },
    (failure: unknown) => failure as ForksnapError,
  );
  return { error, events: events.history };
}

async function nothingLeft(temp: TempPaths): Promise<void> {
  expect(await readdir(path.join(temp.paths.stateDir, 'jobs')).catch(() => []), 'journals').toEqual([]);
  expect((await readdir(path.join(temp.paths.stateDir, 'locks')).catch(() => [])).filter((name) => !name.startsWith('.')), 'locks').toEqual([]);
}

describe('runSnapshotJob preflight', () => {
  it('a Ctrl-C while the QMP socket does not answer is CANCELLED, not a refusal; job-failed has the result shape; clean-up ran', async () => {
    const temp = await state('/nonexistent/qmp.sock');
    const controller = new AbortController();
    setTimeout(() => controller.abort(new ForksnapError('CANCELLED', 'cancelled by SIGINT')), 150);
    const { error, events } = await run(temp, controller.signal);
    expect(error.code).toBe('CANCELLED');
    expect(error.exitCode).toBe(130);
    const failed = events.find((event) => event.type === 'job-failed');
    expect(failed).toMatchObject({ code: 'CANCELLED', phase: 'preflight', snapshotId: 's1', durationMs: expect.any(Number), phasesMs: { preflight: expect.any(Number), cleanup: expect.any(Number) } });
    expect(events.at(-1)?.type).toBe('job-failed');
    await nothingLeft(temp);
  });

  it('a VM that does not answer is VM_UNREACHABLE (exit 3)', async () => {
    const temp = await state('/nonexistent/qmp.sock');
    const { error } = await run(temp, AbortSignal.timeout(60_000));
    expect(error.code).toBe('VM_UNREACHABLE');
    expect(error.exitCode).toBe(3);
    await nothingLeft(temp);
  }, 20_000);

  it('a VM paused by someone else is VM_NOT_RUNNING; a migrating VM is VM_BUSY; nothing is sent but queries', async () => {
    for (const [initial, code] of [[{ status: 'paused' }, 'VM_NOT_RUNNING'], [{ migration: 'active' }, 'VM_BUSY']] as const) {
      const { server } = await startFakeVm(initial);
      cleanups.push(() => server.close());
      const temp = await state(server.path);
      const { error, events } = await run(temp, AbortSignal.timeout(10_000));
      expect(error.code).toBe(code);
      expect(events.find((event) => event.type === 'job-failed')).toMatchObject({ code, phase: 'preflight' });
      expect(server.received.map((command) => command.execute).filter((name) => !name.startsWith('query-') && name !== 'qmp_capabilities')).toEqual([]);
      await nothingLeft(temp);
    }
  });
});
