import type { Logger } from 'pino';

/**
 * The narrow view of the job's phase runner that a capture strategy needs: run one of the
 * capture's own steps as a named, timed phase. src/jobs/phase-runner.ts implements it; forker/
 * does not depend on jobs/.
 */
export type CapturePhase = 'halt' | 'disk-snapshot' | 'capture' | 'switchover';

export interface PhaseTools {
  /** Aborts on the job's cancel or the phase's timeout (the first one wins and is recorded). */
  readonly signal: AbortSignal;
  readonly log: Logger;
  progress(update: { percent?: number; bytes?: number; totalBytes?: number; message?: string }): void;
}

export interface CapturePhaseRunner {
  run<T>(phase: CapturePhase, timeoutMs: number, body: (tools: PhaseTools) => Promise<T>): Promise<T>;
}

