import { sleep } from '../util/abort.js';

/**
 * The scheduler's time source. The daemon uses the system clock; tests drive a manual one, so a
 * "nightly at 02:00" schedule can be fired without waiting for the night.
 */
export interface Clock {
  now(): number;
  /** Resolve after `ms` of this clock's time; reject with `signal.reason` when aborted. */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) => sleep(Math.max(0, ms), signal),
};
