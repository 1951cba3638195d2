import { setMaxListeners } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import { ForksnapError, type ErrorContext } from '../errors.js';

/** Sleep that rejects with `signal.reason` when aborted. */
export async function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  await delay(ms, undefined, signal ? { signal } : undefined).catch((error: unknown) => {
    if (signal?.aborted) throw signal.reason;
    throw error;
  });
}

/**
 * A signal that aborts when `parent` aborts or after `ms`, with a PHASE_TIMEOUT error as reason.
 * The caller must call `dispose()` in `finally` so the timer never outlives the operation.
 */
export function timeoutSignal(
  ms: number,
  what: string,
  parent?: AbortSignal,
  context: ErrorContext = {},
): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const timer = setTimeout(() => {
    controller.abort(new ForksnapError('PHASE_TIMEOUT', `${what} did not finish within ${ms} ms`, { ...context, timeoutMs: ms }));
  }, ms);
  timer.unref();
  const signal = parent ? AbortSignal.any([parent, controller.signal]) : controller.signal;
  // Phases hang many short-lived waiters on one signal; each removes its listener when done.
  setMaxListeners(0, signal);
  return { signal, dispose: () => clearTimeout(timer) };
}

/**
 * Race `promise` against a timer of `ms`: resolves with the promise's value, or with `onTimeout()`
 * when the time runs out. The timer is always cleared, so it never keeps the process alive.
 */
export async function withDeadline<T, U>(promise: Promise<T>, ms: number, onTimeout: () => U, signal?: AbortSignal): Promise<T | U> {
  const local = new AbortController();
  const combined = signal ? AbortSignal.any([signal, local.signal]) : local.signal;
  try {
    return await Promise.race([promise, sleep(ms, combined).then(onTimeout, (error: unknown) => {
      if (signal?.aborted) throw signal.reason;
      if (local.signal.aborted) return new Promise<never>(() => {});
      throw error;
    })]);
  } finally {
    local.abort(new Error('deadline race settled'));
  }
}
