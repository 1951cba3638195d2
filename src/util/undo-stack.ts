import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import { withDeadline } from './abort.js';

/**
 * Undo actions registered as each step succeeds and run in reverse order.
 * Node 20 has no AsyncDisposableStack; this is the small one the brief allows.
 *
 * - `push()` returns a handle: `release()` drops exactly that action once the success path has
 *   handled what it undoes (no lookup by label, no silent miss).
 * - `when: 'always'` actions run on every unwind (close a connection, unlock); `'on-failure'` ones
 *   only when the job failed (resume the parent, remove a partial snapshot).
 * - Every action gets a deadline and a signal: an action that hangs is abandoned when its time is
 *   up, counted as failed, and the unwinding goes on. An action that fails is logged and the
 *   unwinding goes on: clean-up never throws over the original error.
 */
export type UndoWhen = 'always' | 'on-failure';

export type UndoAction = (signal: AbortSignal) => unknown;

export interface UndoHandle {
  /** Drop this action: the success path took care of it. Idempotent. */
  release(): void;
}

export interface UndoOptions {
  readonly when?: UndoWhen;
  /** Deadline of this action during unwinding (default 60 s). */
  readonly timeoutMs?: number;
}

interface Entry {
  readonly label: string;
  readonly run: UndoAction;
  readonly when: UndoWhen;
  readonly timeoutMs: number;
}

export const DEFAULT_UNDO_TIMEOUT_MS = 60_000;

export class UndoStack {
  readonly #actions: Entry[] = [];
  #unwound = false;

  constructor(private readonly log: Logger) {}

  push(label: string, run: UndoAction, options: UndoOptions = {}): UndoHandle {
    if (this.#unwound) throw new Error(`undo stack already unwound; cannot register "${label}"`);
    const entry: Entry = { label, run, when: options.when ?? 'always', timeoutMs: options.timeoutMs ?? DEFAULT_UNDO_TIMEOUT_MS };
    this.#actions.push(entry);
    return {
      release: () => {
        const index = this.#actions.indexOf(entry);
        if (index >= 0) this.#actions.splice(index, 1);
      },
    };
  }

  get size(): number {
    return this.#actions.length;
  }

  get labels(): string[] {
    return this.#actions.map((action) => action.label);
  }

  /**
   * Run the actions in reverse order ('on-failure' ones only if `failed`); returns the labels of the
   * ones that failed or ran out of time. Each action's signal aborts at its own deadline or when
   * `signal` (the whole clean-up's bound) aborts.
   */
  async unwind(options: { failed: boolean; signal?: AbortSignal }): Promise<string[]> {
    this.#unwound = true;
    const failed: string[] = [];
    while (this.#actions.length > 0) {
      const action = this.#actions.pop()!;
      if (action.when === 'on-failure' && !options.failed) {
        this.log.debug({ undo: action.label }, 'undo step skipped: the job succeeded');
        continue;
      }
      const started = performance.now();
      const deadline = AbortSignal.timeout(action.timeoutMs);
      const signal = options.signal ? AbortSignal.any([options.signal, deadline]) : deadline;
      try {
        if (signal.aborted) throw signal.reason;
        let abandoned = false;
        const ran = Promise.resolve()
          .then(() => action.run(signal))
          .then(() => 'done' as const, (error: unknown) => {
            if (!abandoned) throw error;
            this.log.warn({ undo: action.label, err: errorMessage(error) }, 'abandoned undo step failed later');
            return 'done' as const;
          });
        // An action that ignores its signal is not waited for past its deadline.
        let outcome: 'done' | 'timeout' | undefined;
        try {
          outcome = await withDeadline(ran, action.timeoutMs, () => 'timeout' as const, options.signal);
        } finally {
          if (outcome !== 'done') abandoned = true;
        }
        if (outcome === 'timeout') throw new Error(`did not finish within ${action.timeoutMs} ms`);
        this.log.debug({ undo: action.label, durationMs: Math.round(performance.now() - started) }, 'undo step done');
      } catch (error) {
        failed.push(action.label);
        this.log.error({ undo: action.label, durationMs: Math.round(performance.now() - started), err: errorMessage(error) }, 'undo step failed');
      }
    }
    return failed;
  }
}
