import type { RateSample } from '../demo/guest-control.js';

/**
 * The guest's memory-dirtying rate over a window of host time, from the cumulative totals of its
 * RATE lines (test/fixtures/guest/control.sh, `dirty N`): (total at the last line in the window -
 * total at the first) / (their arrival times apart). A line reports what the guest did in the second
 * before it was printed, so only the lines' totals are used, never their own rates: a window that
 * starts right after a pause is not polluted by the seconds before the pause.
 */
export interface WindowRate {
  readonly mibPerS: number;
  /** Host time between the two lines used. */
  readonly spanMs: number;
  /** False when the window held fewer than two lines and lines up to 1 s after it were used. */
  readonly exact: boolean;
}

/** Lines within [from, to] are used; a window too short for two lines is widened by 1 s at the end. */
export function rateInWindow(samples: readonly RateSample[], from: number, to: number): WindowRate | undefined {
  const inside = samples.filter((sample) => sample.at >= from && sample.at <= to);
  if (inside.length >= 2) return between(inside[0]!, inside.at(-1)!, true);
  const widened = samples.filter((sample) => sample.at >= from && sample.at <= to + 1000);
  if (widened.length >= 2) return between(widened[0]!, widened.at(-1)!, false);
  // One line: its own one-second measure is all there is.
  const only = widened[0];
  return only ? { mibPerS: only.mibPerS, spanMs: 1000, exact: false } : undefined;
}

function between(first: RateSample, last: RateSample, exact: boolean): WindowRate {
  const spanMs = last.at - first.at;
  return { mibPerS: ((last.totalMiB - first.totalMiB) * 1000) / spanMs, spanMs, exact };
}
