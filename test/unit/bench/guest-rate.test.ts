import { describe, expect, it } from 'vitest';
import { rateInWindow, rateWithoutCpuWait } from '../../../src/bench/guest-rate.js';

/**
 * RATE lines every 250 ms of guest uptime: 400 MiB/s, then 200 MiB/s from t=1000. The line
 * printed at uptime 1250 reaches the host 200 ms late (t=1450).
 */
const samples = [
  { at: 0, uptimeMs: 10_000, totalMiB: 0, mibPerS: 400 },
  { at: 250, uptimeMs: 10_250, totalMiB: 100, mibPerS: 400 },
  { at: 500, uptimeMs: 10_500, totalMiB: 200, mibPerS: 400 },
  { at: 750, uptimeMs: 10_750, totalMiB: 300, mibPerS: 400 },
  { at: 1000, uptimeMs: 11_000, totalMiB: 400, mibPerS: 400 },
  { at: 1450, uptimeMs: 11_250, totalMiB: 450, mibPerS: 200 },
  { at: 1500, uptimeMs: 11_500, totalMiB: 500, mibPerS: 200 },
  { at: 1750, uptimeMs: 11_750, totalMiB: 550, mibPerS: 200 },
];

describe('rateInWindow', () => {
  it('divides the growth of the cumulative total by the guest uptime between the first and last line inside', () => {
    expect(rateInWindow(samples, 0, 1000)).toEqual({ mibPerS: 400, spanMs: 1000, fromAt: 0, toAt: 1000, mib: 400, exact: true });
    // Picked by arrival, timed by the guest: the late line does not shrink the span.
    expect(rateInWindow(samples, 1100, 1800)).toEqual({ mibPerS: 200, spanMs: 500, fromAt: 1450, toAt: 1750, mib: 100, exact: true });
  });

  it('falls back to host arrival times for lines without the guest uptime', () => {
    const old = samples.map(({ uptimeMs: _, ...rest }) => rest);
    expect(rateInWindow(old, 1100, 1800)).toMatchObject({ spanMs: 300, mib: 100, exact: true });
  });

  it('widens a window too short for two lines by 0.5 s, and says so', () => {
    expect(rateInWindow(samples, 1100, 1460)).toMatchObject({ mibPerS: 200, spanMs: 500, fromAt: 1450, toAt: 1750, exact: false });
  });

  it("falls back to the one line's own measure, or to nothing", () => {
    expect(rateInWindow(samples, 1600, 1700)).toEqual({ mibPerS: 200, spanMs: 250, fromAt: 1500, toAt: 1750, mib: 50, exact: false });
    expect(rateInWindow(samples, 3000, 4000)).toBeUndefined();
  });
});

describe('rateWithoutCpuWait', () => {
  it("takes the vCPU thread's share of run-queue wait out of the time", () => {
    const rate = rateInWindow(samples, 0, 1000)!;
    expect(rateWithoutCpuWait(rate, 0.5)).toBe(800);
    expect(rateWithoutCpuWait(rate, 0)).toBe(400);
    expect(rateWithoutCpuWait(rate, undefined)).toBeUndefined();
    expect(rateWithoutCpuWait(rate, 1)).toBeUndefined();
  });
});
