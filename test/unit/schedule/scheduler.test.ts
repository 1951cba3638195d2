import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Paths } from '../../../src/config.js';
import { newJobRecord, type JobRecord, type JobRequest, type JobTrigger } from '../../../src/jobs/job-record.js';
import { Scheduler } from '../../../src/schedule/scheduler.js';
import { scheduleSpecSchema } from '../../../src/schedule/schedule-spec.js';
import { scheduleStateFile } from '../../../src/schedule/schedule-state.js';
import { ManualClock } from '../../helpers/manual-clock.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

const log = pino({ level: 'silent' });
let tmp: TempPaths;
let paths: Paths;
let scheduler: Scheduler | undefined;
let submitted: { request: JobRequest; origin: { trigger: JobTrigger; schedule: string }; at: string }[];
let busy: boolean;

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
  submitted = [];
  busy = false;
});
afterEach(async () => {
  await scheduler?.stop();
  scheduler = undefined;
  await tmp.cleanup();
});

function start(clock: ManualClock, spec: Record<string, unknown>): Promise<void> {
  let n = 0;
  scheduler = new Scheduler({
    paths,
    log,
    clock,
    schedules: [{ vm: 'db1', spec: scheduleSpecSchema.parse(spec) }],
    submit: async (request, origin) => {
      submitted.push({ request, origin, at: new Date(clock.now()).toISOString() });
      return { ...newJobRecord(`job${++n}`, request, origin.trigger, origin.schedule) } as JobRecord;
    },
    busy: () => busy,
  });
  return scheduler.start();
}

const NIGHTLY = { name: 'nightly', cron: '0 2 * * *', timezone: 'Europe/Berlin' };

describe('Scheduler', () => {
  it('fires a nightly 02:00 Europe/Berlin schedule at 02:00 Berlin time, once a night, with its labels and job options', async () => {
    const clock = new ManualClock('2026-11-20T22:00:00Z');
    await start(clock, { ...NIGHTLY, job: { strategy: 'precopy', labels: { tier: 'db' } } });
    await clock.advanceTo('2026-11-21T00:59:59Z');
    expect(submitted).toEqual([]);
    await clock.advanceTo('2026-11-21T01:00:00Z');
    expect(submitted).toHaveLength(1);
    expect(submitted[0]).toMatchObject({
      at: '2026-11-21T01:00:00.000Z',
      origin: { trigger: 'schedule', schedule: 'nightly' },
      request: { vm: 'db1', strategy: 'precopy', labels: { tier: 'db', 'forksnap.schedule': 'nightly', 'forksnap.slot': '2026-11-21T01:00:00.000Z' } },
    });
    await clock.advanceTo('2026-11-24T00:30:00Z');
    expect(submitted.map((entry) => entry.at)).toEqual(['2026-11-21T01:00:00.000Z', '2026-11-22T01:00:00.000Z', '2026-11-23T01:00:00.000Z']);
    expect(scheduler!.list()).toMatchObject([{ name: 'nightly', nextRunAt: '2026-11-24T01:00:00.000Z', lastSlot: '2026-11-23T01:00:00.000Z', lastJob: 'job3' }]);
  });

  it('follows daylight saving time: 02:00 that does not exist runs at 03:00 CEST, and the repeated hour runs once', async () => {
    const clock = new ManualClock('2026-03-28T12:00:00Z');
    await start(clock, NIGHTLY);
    await clock.advanceTo('2026-03-30T12:00:00Z');
    // 29 March: clocks jump from 02:00 to 03:00 (01:00Z); 30 March: 02:00 CEST = 00:00Z.
    expect(submitted.map((entry) => entry.at)).toEqual(['2026-03-29T01:00:00.000Z', '2026-03-30T00:00:00.000Z']);
    await scheduler!.stop();
    submitted.length = 0;
    const autumn = new ManualClock('2026-10-24T12:00:00Z');
    await start(autumn, { ...NIGHTLY, missedRuns: 'skip' }); // (the spring run's state says months were missed)
    await autumn.advanceTo('2026-10-26T12:00:00Z');
    // 25 October: 02:00-03:00 happens twice; one run. 26 October: 02:00 CET = 01:00Z.
    expect(submitted.map((entry) => entry.at)).toEqual(['2026-10-25T00:00:00.000Z', '2026-10-26T01:00:00.000Z']);
  });

  it('supports a seconds field and persists the last slot it handled', async () => {
    const clock = new ManualClock('2026-11-21T10:00:00Z');
    await start(clock, { name: 'often', cron: '*/20 * * * * *', timezone: 'UTC' });
    await clock.advanceTo('2026-11-21T10:01:00Z');
    expect(submitted.map((entry) => entry.at.slice(11, 19))).toEqual(['10:00:20', '10:00:40', '10:01:00']);
    const state = JSON.parse(await readFile(scheduleStateFile(paths), 'utf8'));
    expect(state['db1/often']).toMatchObject({ lastSlot: '2026-11-21T10:01:00.000Z', lastJob: 'job3', outcome: 'submitted' });
  });

  it('skips a slot while the schedule\'s previous job is still queued or running', async () => {
    const clock = new ManualClock('2026-11-21T00:30:00Z');
    await start(clock, NIGHTLY);
    busy = true;
    await clock.advanceTo('2026-11-21T01:00:00Z');
    expect(submitted).toEqual([]);
    expect(scheduler!.list()[0]).toMatchObject({ lastSlot: '2026-11-21T01:00:00.000Z' });
  });

  describe('after downtime', () => {
    async function writeState(lastSlot: string): Promise<void> {
      await mkdir(path.dirname(scheduleStateFile(paths)), { recursive: true });
      await writeFile(scheduleStateFile(paths), JSON.stringify({ 'db1/nightly': { lastSlot } }));
    }

    it('run-once: runs one catch-up job at start for the latest missed slot, however many were missed', async () => {
      await writeState('2026-11-18T01:00:00.000Z');
      const clock = new ManualClock('2026-11-21T09:00:00Z');
      await start(clock, { ...NIGHTLY, missedRuns: 'run-once' });
      expect(submitted).toHaveLength(1);
      expect(submitted[0]!.request.labels['forksnap.slot']).toBe('2026-11-21T01:00:00.000Z');
      expect(scheduler!.list()[0]).toMatchObject({ lastSlot: '2026-11-21T01:00:00.000Z', nextRunAt: '2026-11-22T01:00:00.000Z' });
    });

    it('run-once: not for a slot older than missedRunMaxAgeHours', async () => {
      await writeState('2026-11-18T01:00:00.000Z');
      const clock = new ManualClock('2026-11-21T09:00:00Z');
      await start(clock, { ...NIGHTLY, missedRuns: 'run-once', missedRunMaxAgeHours: 6 });
      expect(submitted).toEqual([]);
    });

    it('skip: waits for the next slot', async () => {
      await writeState('2026-11-18T01:00:00.000Z');
      const clock = new ManualClock('2026-11-21T09:00:00Z');
      await start(clock, { ...NIGHTLY, missedRuns: 'skip' });
      expect(submitted).toEqual([]);
      expect(scheduler!.list()[0]).toMatchObject({ lastSlot: '2026-11-21T01:00:00.000Z' });
      await clock.advanceTo('2026-11-22T01:00:00Z');
      expect(submitted).toHaveLength(1);
    });

    it('nothing was missed if the last slot was handled, nor on the very first start', async () => {
      await writeState('2026-11-21T01:00:00.000Z');
      await start(new ManualClock('2026-11-21T09:00:00Z'), NIGHTLY);
      await scheduler!.stop();
      await tmp.cleanup();
      tmp = await tempPaths();
      paths = tmp.paths;
      await start(new ManualClock('2026-11-21T09:00:00Z'), NIGHTLY);
      expect(submitted).toEqual([]);
    });
  });
});
