import type { Clock } from '../../src/schedule/clock.js';

/**
 * A clock the test moves by hand, for the scheduler: `advanceTo` walks through every sleep that
 * ends on the way (in order), letting the woken code run until it sleeps again before going on.
 */
export class ManualClock implements Clock {
  #now: number;
  #sleepers: { until: number; resolve: () => void }[] = [];

  constructor(start: string | number) {
    this.#now = typeof start === 'string' ? Date.parse(start) : start;
  }

  now(): number {
    return this.#now;
  }

  sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const sleeper = {
        until: this.#now + Math.max(0, ms),
        resolve: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        this.#sleepers = this.#sleepers.filter((entry) => entry !== sleeper);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#sleepers.push(sleeper);
    });
  }

  async advanceTo(target: string | number): Promise<void> {
    const until = typeof target === 'string' ? Date.parse(target) : target;
    for (;;) {
      const due = this.#sleepers.filter((sleeper) => sleeper.until <= until).sort((a, b) => a.until - b.until)[0];
      if (!due) break;
      this.#now = Math.max(this.#now, due.until);
      const woken = this.#sleepers.filter((sleeper) => sleeper.until <= this.#now);
      this.#sleepers = this.#sleepers.filter((sleeper) => sleeper.until > this.#now);
      for (const sleeper of woken) sleeper.resolve();
      await this.#untilSleeping();
    }
    this.#now = Math.max(this.#now, until);
    await settle();
  }

  /** Let the woken code run (file IO included) until it sleeps again; give up after 5 s of real time. */
  async #untilSleeping(): Promise<void> {
    await settle();
    const deadline = Date.now() + 5000;
    while (this.#sleepers.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 1));
  }

  get sleeping(): number {
    return this.#sleepers.length;
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 2; i++) await new Promise((resolve) => setImmediate(resolve));
}
