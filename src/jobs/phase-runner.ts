import { setMaxListeners } from 'node:events';
import type { Logger } from 'pino';
import { ForksnapError, toForksnapError, type ErrorCode } from '../errors.js';
import type { CapturePhaseRunner, PhaseTools } from '../forker/capture-phases.js';
import { roundMs } from '../util/round-ms.js';
import type { JobEventStream, Phase } from './events.js';

export type { PhaseTools } from '../forker/capture-phases.js';

/** Each phase's error code when a failure is not already a ForksnapError: the code names the step. */
const PHASE_ERROR: Record<Phase, ErrorCode> = {
  preflight: 'PREFLIGHT_FAILED',
  prepare: 'PREPARE_FAILED',
  halt: 'HALT_FAILED',
  'disk-snapshot': 'DISK_SNAPSHOT_FAILED',
  capture: 'CAPTURE_FAILED',
  switchover: 'CAPTURE_FAILED',
  isolate: 'ISOLATION_FAILED',
  shutdown: 'SHUTDOWN_FAILED',
  materialise: 'MATERIALISE_FAILED',
  finish: 'FINISH_FAILED',
  cleanup: 'CLEANUP_FAILED',
};

/** How a phase ended. `timeout` and `cancelled` are recorded as they happen; the first one wins. */
export type PhaseEnd = 'done' | 'failed' | 'timeout' | 'cancelled';

export interface PhaseRecord {
  readonly phase: Phase;
  readonly durationMs: number;
  readonly ended: PhaseEnd;
}

export interface PhaseOptions {
  /**
   * false: the job's cancel signal does not abort this phase, only its own deadline does (the
   * clean-up after a cancellation must still run, bounded).
   */
  readonly cancellable?: boolean;
}

/**
 * Runs phases as typed steps: each has its own timeout, raced against the job's cancel signal as one
 * abort (the first of the two is recorded when it fires, like execa's `terminationReason ??=`, not
 * worked out afterwards); publishes start/progress/end events, logs its duration, and records it for
 * the metadata. A cancellation is rethrown as the job signal's reason, never wrapped; a timeout as
 * its PHASE_TIMEOUT error; other failures get the phase's own code and the phase in the context.
 */
export class PhaseRunner implements CapturePhaseRunner {
  readonly durations: Partial<Record<Phase, number>> = {};
  readonly records: PhaseRecord[] = [];
  current: Phase | undefined;
  #lastProgressAt = 0;

  constructor(private readonly events: JobEventStream, private readonly log: Logger, private readonly signal: AbortSignal, private readonly context: Record<string, unknown>) {}

  async run<T>(phase: Phase, timeoutMs: number, body: (tools: PhaseTools) => Promise<T>, options: PhaseOptions = {}): Promise<T> {
    const log = this.log.child({ phase });
    const controller = new AbortController();
    setMaxListeners(0, controller.signal); // phases hang many short-lived waiters on one signal
    let ended: 'timeout' | 'cancelled' | undefined;
    const timeoutError = new ForksnapError('PHASE_TIMEOUT', `phase ${phase} did not finish within ${timeoutMs} ms`, { ...this.context, phase, timeoutMs });
    const timer = setTimeout(() => {
      ended ??= 'timeout';
      controller.abort(timeoutError);
    }, timeoutMs);
    timer.unref();
    // The job signal's reason is a cancel (CANCELLED) or the job breaking itself (e.g. NO_SPACE):
    // either way it is rethrown as it is.
    const onCancel = () => {
      ended ??= 'cancelled';
      controller.abort(this.signal.reason);
    };
    const cancellable = options.cancellable ?? true;
    if (cancellable) {
      if (this.signal.aborted) onCancel();
      else this.signal.addEventListener('abort', onCancel, { once: true });
    }
    this.current = phase;
    const started = performance.now();
    const record = (end: PhaseEnd) => {
      const durationMs = roundMs(performance.now() - started);
      this.durations[phase] = roundMs((this.durations[phase] ?? 0) + durationMs);
      this.records.push({ phase, durationMs, ended: end });
      return durationMs;
    };
    this.events.emit({ type: 'phase-start', phase });
    log.info('phase start');
    try {
      const result = await body({
        signal: controller.signal,
        log,
        progress: (update) => {
          const now = performance.now();
          if (update.percent !== 100 && now - this.#lastProgressAt < 100) return;
          this.#lastProgressAt = now;
          this.events.emit({ type: 'phase-progress', phase, ...update });
        },
      });
      const durationMs = record('done');
      this.events.emit({ type: 'phase-end', phase, durationMs });
      log.info({ durationMs }, 'phase done');
      return result;
    } catch (error) {
      // Read once, when the body failed: whichever of timeout and cancel fired first.
      const reason = ended;
      const durationMs = record(reason ?? 'failed');
      if (reason === 'cancelled') {
        log.warn({ durationMs, reason: errorText(this.signal.reason) }, 'phase aborted by the job signal');
        throw this.signal.reason;
      }
      if (reason === 'timeout') {
        log.error({ durationMs, timeoutMs, err: errorText(error) }, 'phase timed out');
        throw timeoutError;
      }
      const wrapped = toForksnapError(error, PHASE_ERROR[phase], `phase ${phase} failed`, { ...this.context, phase });
      if (wrapped.context.phase === undefined) Object.assign(wrapped.context, { phase });
      log.error({ durationMs, code: wrapped.code, err: wrapped.message }, 'phase failed');
      throw wrapped;
    } finally {
      clearTimeout(timer);
      this.signal.removeEventListener('abort', onCancel);
    }
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

