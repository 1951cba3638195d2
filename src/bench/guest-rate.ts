import type { RateSample } from '../demo/guest-control.js';

/**
 * The guest's memory-dirtying rate over a window of host time, from the cumulative totals of its
 * RATE lines (test/fixtures/guest/control.sh, `dirty N`): (total at the last line in the window -
 * total at the first) / (the guest's uptime between them). The lines are picked by their host
 * arrival time, the span is measured on the guest's own clock, so a line delayed on its way out
 * (the serial port, QEMU's main loop, this event loop) does not stretch or shrink it. Under TCG the
 * guest's clock runs with the host's while the guest runs. A line reports what the guest did in
 * the interval before it was printed, so only the lines' totals are used, never their own rates:
 * a window that starts right after a pause is not polluted by the time before the pause.
 */
export interface WindowRate {
  readonly mibPerS: number;
  /** Time between the two lines used (guest uptime when the lines carry it, else host arrival). */
  readonly spanMs: number;
  /** The host times the rate was measured between, and the MiB the guest rewrote in between. */
  readonly fromAt: number;
  readonly toAt: number;
  readonly mib: number;
  /** False when the window held fewer than two lines and lines up to 1 s after it were used. */
  readonly exact: boolean;
}

/** Lines within [from, to] are used; a window too short for two lines is widened by 0.5 s at the end. */
export function rateInWindow(samples: readonly RateSample[], from: number, to: number): WindowRate | undefined {
  const inside = samples.filter((sample) => sample.at >= from && sample.at <= to);
  if (inside.length >= 2) return between(inside[0]!, inside.at(-1)!, true);
  const widened = samples.filter((sample) => sample.at >= from && sample.at <= to + 500);
  if (widened.length >= 2) return between(widened[0]!, widened.at(-1)!, false);
  // One line: its own measure over the interval before it is all there is.
  const only = widened[0];
  return only ? { mibPerS: only.mibPerS, spanMs: 250, fromAt: only.at - 250, toAt: only.at, mib: only.mibPerS / 4, exact: false } : undefined;
}

export function between(first: RateSample, last: RateSample, exact: boolean): WindowRate {
  const spanMs = first.uptimeMs !== undefined && last.uptimeMs !== undefined ? last.uptimeMs - first.uptimeMs : last.at - first.at;
  const mib = last.totalMiB - first.totalMiB;
  return { mibPerS: (mib * 1000) / spanMs, spanMs, fromAt: first.at, toAt: last.at, mib, exact };
}

/**
 * The same rate with the vCPU thread's run-queue wait taken out of the time (see vcpu-clock.ts):
 * what the guest would have done had it never waited for a host CPU. `waitShare` is the share of
 * the host time between the two lines' arrivals the vCPU thread spent waiting in a run queue.
 */
export function rateWithoutCpuWait(rate: WindowRate, waitShare: number | undefined): number | undefined {
  if (waitShare === undefined || waitShare >= 1) return undefined;
  return rate.mibPerS / (1 - Math.max(0, waitShare));
}
