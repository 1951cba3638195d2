import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Paths } from '../../../src/config.js';
import { ForksnapError } from '../../../src/errors.js';
import { JobEngine } from '../../../src/jobs/job-engine.js';
import { jobRequestSchema, newJobRecord } from '../../../src/jobs/job-record.js';
import { jobRecordsDir } from '../../../src/jobs/job-store.js';
import type { RunJobOptions, SnapshotResult } from '../../../src/jobs/run-job.js';
import { saveVm } from '../../../src/vm/registry.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

/**
 * The engine's queueing, concurrency, cancellation and persistence, with the job body replaced by
 * a fake the test finishes by hand (the real pipeline is exercised by the integration tests).
 */
const log = pino({ level: 'silent' });
let tmp: TempPaths;
let paths: Paths;
let runs: Map<string, { options: RunJobOptions; finish: () => void }>;
let engine: JobEngine;

function fakeRun(options: RunJobOptions): Promise<SnapshotResult> {
  return new Promise((resolve, reject) => {
    options.events.emit({ type: 'phase-start', phase: 'preflight' });
    options.signal.addEventListener('abort', () => {
      const reason = options.signal.reason as ForksnapError;
      options.events.emit({ type: 'job-failed', code: reason.code, message: reason.message });
      reject(reason);
    }, { once: true });
    runs.set(options.id, {
      options,
      finish: () => {
        const meta: SnapshotResult = {
          schemaVersion: 1, version: 1, id: `${options.request.vm}-${options.id}`, vm: options.request.vm, createdAt: new Date().toISOString(), strategy: 'fork', consistency: 'clean',
          consistencyReason: 'test', parentDowntimeMs: 12, timeToStateMs: 1, timeToImageMs: 2, phasesMs: {}, disks: [], labels: {}, qemu: { binary: 'qemu', version: '7.2.0' }, job: options.id, dir: '/nonexistent',
        };
        options.onSnapshot?.(meta);
        options.events.emit({ type: 'job-done', snapshotId: meta.id, consistency: 'clean', downtimeMs: 12, durationMs: 5 });
        resolve(meta);
      },
    });
  });
}

const request = (vm: string, extra: Record<string, unknown> = {}) => jobRequestSchema.parse({ vm, ...extra });
const tick = () => new Promise((resolve) => setTimeout(resolve, 20));
async function newEngine(maxConcurrent: number): Promise<JobEngine> {
  const created = new JobEngine({ paths, log, maxConcurrent, run: fakeRun });
  await created.start();
  return created;
}

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
  runs = new Map();
  for (const name of ['vm1', 'vm2', 'vm3']) await saveVm(paths, { name, origin: 'attached', qmpSocket: `/nonexistent/${name}.sock`, disks: [], createdAt: new Date().toISOString() });
  engine = await newEngine(2);
});
afterEach(async () => {
  engine.cancelAll('test over');
  await tick();
  await tmp.cleanup();
});

describe('JobEngine', () => {
  it('runs one job per VM at a time, in order, and up to maxConcurrent on different VMs', async () => {
    const a = await engine.submit(request('vm1'));
    const b = await engine.submit(request('vm1'));
    const c = await engine.submit(request('vm2'));
    const d = await engine.submit(request('vm3'));
    expect([a, b, c, d].map((job) => engine.get(job.id).status)).toEqual(['running', 'queued', 'running', 'queued']);
    expect(engine.history(b.id)[0]).toMatchObject({ type: 'job-accepted', queuePosition: 1 });
    expect(engine.history(a.id)[0]).toMatchObject({ type: 'job-accepted', queuePosition: 0 });
    runs.get(a.id)!.finish();
    await tick();
    // vm1 is free and a slot too: b (first in line) starts; d still waits for a slot.
    expect([a, b, c, d].map((job) => engine.get(job.id).status)).toEqual(['succeeded', 'running', 'running', 'queued']);
    runs.get(c.id)!.finish();
    await tick();
    expect(engine.get(d.id).status).toBe('running');
    expect(engine.get(a.id)).toMatchObject({ snapshotId: 'vm1-' + a.id, consistency: 'clean', downtimeMs: 12, lastSeq: 3 });
  });

  it('cancels a queued job without running it, and a running one through its signal', async () => {
    const a = await engine.submit(request('vm1'));
    const b = await engine.submit(request('vm1'));
    expect(engine.cancel(b.id).status).toBe('cancelled');
    expect(runs.has(b.id)).toBe(false);
    engine.cancel(a.id);
    await tick();
    expect(runs.get(a.id)!.options.signal.aborted).toBe(true);
    expect(engine.get(a.id)).toMatchObject({ status: 'cancelled', error: { code: 'CANCELLED' } });
    expect(() => engine.cancel(a.id)).toThrow(expect.objectContaining({ code: 'JOB_FINISHED' }));
    expect(() => engine.cancel('nope')).toThrow(expect.objectContaining({ code: 'JOB_NOT_FOUND' }));
    expect(() => engine.get('../../etc/passwd')).toThrow(expect.objectContaining({ code: 'JOB_NOT_FOUND' }));
  });

  it('refuses what cannot run before queueing it', async () => {
    await expect(engine.submit(request('nope'))).rejects.toMatchObject({ code: 'VM_NOT_FOUND' });
    await expect(engine.submit(request('../vm1'))).rejects.toMatchObject({ code: 'INVALID_NAME' });
    await engine.submit(request('vm1', { snapshotId: 'same' }));
    await expect(engine.submit(request('vm2', { snapshotId: 'same' }))).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
    expect(engine.list()).toHaveLength(1);
  });

  it('persists job records, and after a crash marks unfinished ones failed with the reason', async () => {
    const a = await engine.submit(request('vm1'));
    runs.get(a.id)!.finish();
    await tick();
    const running = newJobRecord('crashed1', request('vm2'), 'api');
    await mkdir(jobRecordsDir(paths), { recursive: true });
    await writeFile(path.join(jobRecordsDir(paths), 'crashed1.json'), JSON.stringify({ ...running, status: 'running', phase: 'capture' }));
    await writeFile(path.join(jobRecordsDir(paths), 'garbage.json'), '{"torn');
    const restarted = await newEngine(2);
    expect(restarted.get(a.id)).toMatchObject({ status: 'succeeded', snapshotId: `vm1-${a.id}` });
    expect(restarted.get('crashed1')).toMatchObject({ status: 'failed', error: { code: 'DAEMON_INTERRUPTED', phase: 'capture' } });
    expect(restarted.get('crashed1').error!.message).toMatch(/daemon stopped \(killed or crashed\) during phase capture/);
    const saved = JSON.parse(await readFile(path.join(jobRecordsDir(paths), 'crashed1.json'), 'utf8'));
    expect(saved.status).toBe('failed');
  });

  it('on shutdown refuses new jobs, cancels queued ones and gives running ones the grace time', async () => {
    const a = await engine.submit(request('vm1'));
    const b = await engine.submit(request('vm1'));
    const stopping = engine.shutdown(5000);
    await expect(engine.submit(request('vm2'))).rejects.toMatchObject({ code: 'DAEMON_SHUTTING_DOWN' });
    expect(engine.get(b.id).status).toBe('cancelled');
    await tick();
    runs.get(a.id)!.finish();
    await stopping;
    expect(engine.get(a.id).status).toBe('succeeded');

    const late = await newEngine(1);
    const c = await late.submit(request('vm2'));
    const started = Date.now();
    await late.shutdown(200);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(late.get(c.id)).toMatchObject({ status: 'cancelled', error: { message: 'the daemon is shutting down' } });
  });

  it('tells listeners every event with the record folded in', async () => {
    const seen: string[] = [];
    engine.onEvent((event, record) => seen.push(`${event.seq}:${event.type}:${record.status}`));
    const a = await engine.submit(request('vm1'));
    runs.get(a.id)!.finish();
    await tick();
    expect(seen).toEqual(['1:job-accepted:queued', '2:phase-start:running', '3:job-done:succeeded']);
  });
});
