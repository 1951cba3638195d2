import type { Logger } from 'pino';
import { ForksnapError, toForksnapError, type ErrorCode } from '../errors.js';
import { timeoutSignal } from '../util/abort.js';
import type { JobEventStream, Phase } from './events.js';

/** Each phase's error code when a failure is not already a ForksnapError. */
const PHASE_ERROR: Record<Phase, ErrorCode> = {
  preflight: 'INTERNAL',
  prepare: 'INTERNAL',
  halt: 'INTERNAL',
  'disk-snapshot': 'DISK_SNAPSHOT_FAILED',
  capture: 'CAPTURE_FAILED',
  switchover: 'CAPTURE_FAILED',
  isolate: 'ISOLATION_FAILED',
  shutdown: 'SHUTDOWN_FAILED',
  materialise: 'MATERIALISE_FAILED',
  merge: 'MERGE_FAILED',
  cleanup: 'INTERNAL',
};

export interface PhaseTools {
  readonly signal: AbortSignal;
  readonly log: Logger;
  progress(update: { percent?: number; bytes?: number; totalBytes?: number; message?: string }): void;
}

/**
 * Runs phases as typed steps: each has its own timeout (combined with the job's cancel signal),
 * publishes start/progress/end events, logs its duration, and records it for the metadata.
 * Cancellation is rethrown as is; other failures are wrapped with the phase's code and the phase
 * name in the context.
 */
export class PhaseRunner {
  readonly durations: Partial<Record<Phase, number>> = {};
  current: Phase | undefined;
  #lastProgressAt = 0;

  constructor(private readonly events: JobEventStream, private readonly log: Logger, private readonly signal: AbortSignal, private readonly context: Record<string, unknown>) {}

  async run<T>(phase: Phase, timeoutMs: number, body: (tools: PhaseTools) => Promise<T>): Promise<T> {
    const log = this.log.child({ phase });
    const timeout = timeoutSignal(timeoutMs, `phase ${phase}`, this.signal, { ...this.context, phase });
    this.current = phase;
    const started = performance.now();
    this.events.emit({ type: 'phase-start', phase });
    log.info('phase start');
    try {
      const result = await body({
        signal: timeout.signal,
        log,
        progress: (update) => {
          const now = performance.now();
          if (update.percent !== 100 && now - this.#lastProgressAt < 100) return;
          this.#lastProgressAt = now;
          this.events.emit({ type: 'phase-progress', phase, ...update });
        },
      });
      const durationMs = round(performance.now() - started);
      this.durations[phase] = (this.durations[phase] ?? 0) + durationMs;
      this.events.emit({ type: 'phase-end', phase, durationMs });
      log.info({ durationMs }, 'phase done');
      return result;
    } catch (error) {
      const durationMs = round(performance.now() - started);
      this.durations[phase] = (this.durations[phase] ?? 0) + durationMs;
      if (this.signal.aborted && error === this.signal.reason) throw error;
      if (timeout.signal.aborted && error === timeout.signal.reason) throw timeout.signal.reason;
      const wrapped = toForksnapError(error, PHASE_ERROR[phase], `phase ${phase} failed`, { ...this.context, phase });
      if (wrapped instanceof ForksnapError && wrapped.context.phase === undefined) Object.assign(wrapped.context, { phase });
      log.error({ durationMs, code: wrapped.code, err: wrapped.message }, 'phase failed');
      throw wrapped;
    } finally {
      timeout.dispose();
    }
  }
}

export function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
