import type { Logger } from 'pino';
import type { QmpClient } from '../qmp/client.js';
import type { QmpEvent } from '../qmp/events.js';
import type { ParentIntent } from './ensure-parent-running.js';

/**
 * What forksnap itself did to the parent's run state during a job, followed as the STOP and
 * RESUME events arrive (a subscription opened before the halt), so the undo resumes the parent
 * only if forksnap paused it and nobody paused it again since (TEAM.md interface 3):
 *
 *   idle --willHalt()--> armed --STOP--> halted-by-us --RESUME--> released
 *
 * A STOP seen while `released` is someone else's pause: forksnap leaves it alone. QMP events carry
 * no origin, so a pause by someone else between willHalt() and forksnap's own STOP (microseconds
 * for `stop`; the pre-copy for precopy) would be taken for forksnap's.
 */
export type HaltState = 'idle' | 'armed' | 'halted-by-us' | 'released';

export class ParentRunWatch implements Disposable {
  #state: HaltState = 'idle';
  #ownsMigration = false;
  #foreignPauses = 0;
  readonly #unsubscribe: () => void;

  constructor(parent: QmpClient, private readonly log: Logger) {
    this.#unsubscribe = parent.events.subscribe((event) => this.#see(event));
  }

  get state(): HaltState {
    return this.#state;
  }

  /** The next STOP of the parent is forksnap's. */
  willHalt(): void {
    if (this.#state === 'idle') this.#state = 'armed';
  }

  /** forksnap is about to start the parent's migration. */
  willMigrate(): void {
    this.#ownsMigration = true;
  }

  /** The migration is over (completed and the parent resumed): nothing of it is ours to cancel. */
  migrationOver(): void {
    this.#ownsMigration = false;
  }

  get intent(): ParentIntent {
    return { pausedByUs: this.#state === 'armed' || this.#state === 'halted-by-us', ownsMigration: this.#ownsMigration };
  }

  close(): void {
    this.#unsubscribe();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #see(event: QmpEvent): void {
    if (event.event === 'STOP') {
      if (this.#state === 'armed') this.#state = 'halted-by-us';
      else if (this.#state === 'released') {
        this.#foreignPauses++;
        this.log.warn({ foreignPauses: this.#foreignPauses }, 'the parent was paused by someone else after forksnap resumed it; forksnap will not resume it');
      }
    } else if (event.event === 'RESUME' && this.#state === 'halted-by-us') {
      this.#state = 'released';
    }
  }
}
