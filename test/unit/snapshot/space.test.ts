import { tmpdir } from 'node:os';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { freeBytes, watchFreeSpace } from '../../../src/snapshot/space.js';

const log = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('watchFreeSpace', () => {
  it('calls onLow once, with the numbers, when free space is under the reserve, and stops', async () => {
    const calls: [string, number][] = [];
    const stop = watchFreeSpace({ path: tmpdir(), reserveBytes: Number.MAX_SAFE_INTEGER, intervalMs: 10, log, onLow: (why, free) => calls.push([why, free]) });
    await sleep(100);
    stop();
    expect(calls).toHaveLength(1);
    expect(calls[0]![0]).toMatch(/MiB free, under the reserve of/);
    expect(calls[0]![1]).toBeGreaterThan(0);
    expect(calls[0]![1]).toBeLessThanOrEqual(await freeBytes(tmpdir()) + 1024 * 1024 * 1024);
  });

  it('stays quiet above the reserve and after stop', async () => {
    const calls: string[] = [];
    const stop = watchFreeSpace({ path: tmpdir(), reserveBytes: 0, intervalMs: 10, log, onLow: (why) => calls.push(why) });
    await sleep(80);
    stop();
    expect(calls).toEqual([]);
    const stopped = watchFreeSpace({ path: tmpdir(), reserveBytes: Number.MAX_SAFE_INTEGER, intervalMs: 10, log, onLow: (why) => calls.push(why) });
    stopped();
    await sleep(50);
    expect(calls).toEqual([]);
  });

  it('never takes a failing statfs for low space', async () => {
    const calls: string[] = [];
    const stop = watchFreeSpace({ path: '/nonexistent/forksnap', reserveBytes: Number.MAX_SAFE_INTEGER, intervalMs: 10, log, onLow: (why) => calls.push(why) });
    await sleep(60);
    stop();
    expect(calls).toEqual([]);
  });
});
