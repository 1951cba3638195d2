import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';

/**
 * Undo actions registered as each step succeeds and run in reverse order.
 * Node 20 has no AsyncDisposableStack; this is the small one the brief allows.
 * An undo action that fails is logged and the unwinding goes on: clean-up never throws
 * over the original error.
 */
export class UndoStack {
  readonly #actions: { label: string; run: () => Promise<void> | void }[] = [];
  #unwound = false;

  constructor(private readonly log: Logger) {}

  push(label: string, run: () => Promise<void> | void): void {
    if (this.#unwound) throw new Error(`undo stack already unwound; cannot register "${label}"`);
    this.#actions.push({ label, run });
  }

  /** Drop a registered action by label once the thing it undoes is handled on the success path. */
  release(label: string): void {
    const index = this.#actions.findLastIndex((action) => action.label === label);
    if (index >= 0) this.#actions.splice(index, 1);
  }

  get size(): number {
    return this.#actions.length;
  }

  /** Run every action in reverse order; returns the labels of the ones that failed. */
  async unwind(): Promise<string[]> {
    this.#unwound = true;
    const failed: string[] = [];
    while (this.#actions.length > 0) {
      const action = this.#actions.pop()!;
      const started = performance.now();
      try {
        await action.run();
        this.log.debug({ undo: action.label, durationMs: Math.round(performance.now() - started) }, 'undo step done');
      } catch (error) {
        failed.push(action.label);
        this.log.error({ undo: action.label, err: errorMessage(error) }, 'undo step failed');
      }
    }
    return failed;
  }
}
