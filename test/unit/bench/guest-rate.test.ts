import { describe, expect, it } from 'vitest';
import { rateInWindow } from '../../../src/bench/guest-rate.js';

/** RATE lines once a second: 300 MiB/s, then 150 MiB/s from t=3000. */
const samples = [
  { at: 0, totalMiB: 0, mibPerS: 300 },
  { at: 1000, totalMiB: 300, mibPerS: 300 },
  { at: 2000, totalMiB: 600, mibPerS: 300 },
  { at: 3000, totalMiB: 900, mibPerS: 300 },
  { at: 4000, totalMiB: 1050, mibPerS: 150 },
  { at: 5000, totalMiB: 1200, mibPerS: 150 },
];

describe('rateInWindow', () => {
  it('divides the growth of the cumulative total by the host time between the first and last line inside', () => {
    expect(rateInWindow(samples, 2500, 5200)).toEqual({ mibPerS: 150, spanMs: 2000, exact: true });
    expect(rateInWindow(samples, 0, 5000)).toEqual({ mibPerS: 240, spanMs: 5000, exact: true });
  });

  it('widens a window too short for two lines by one second, and says so', () => {
    expect(rateInWindow(samples, 3500, 4200)).toEqual({ mibPerS: 150, spanMs: 1000, exact: false });
  });

  it('falls back to the one line there is, or to nothing', () => {
    expect(rateInWindow(samples, 4500, 4600)).toEqual({ mibPerS: 150, spanMs: 1000, exact: false });
    expect(rateInWindow(samples, 6000, 7000)).toBeUndefined();
  });
});
