import { rejection } from '../../helpers/fake-qmp-server.js';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { JobEventStream } from '../../../src/jobs/events.js';
import { PhaseRunner } from '../../../src/jobs/phase-runner.js';

const log = pino({ level: 'silent' });

function runner(signal: AbortSignal = new AbortController().signal) {
  const events = new JobEventStream('j1');
  return { events, phases: new PhaseRunner(events, log, signal, { vm: 'vm1', job: 'j1' }) };
}


/** A body that fails only when its signal aborts, with the signal's reason. */
const untilAborted = ({ signal }: { signal: AbortSignal }) => new Promise<never>((_, reject) => {
  if (signal.aborted) reject(signal.reason);
  signal.addEventListener('abort', () => reject(signal.reason));
});

describe('PhaseRunner', () => {
  it('publishes start and end, records the duration and returns the result', async () => {
    const { events, phases } = runner();
    await expect(phases.run('isolate', 1000, async () => 42)).resolves.toBe(42);
    expect(events.history.map((e) => [e.type, 'phase' in e ? e.phase : undefined])).toEqual([['phase-start', 'isolate'], ['phase-end', 'isolate']]);
    expect(phases.durations.isolate).toBeGreaterThanOrEqual(0);
    expect(phases.records).toEqual([expect.objectContaining({ phase: 'isolate', ended: 'done' })]);
  });

  it("wraps a plain failure with the phase's own code, naming the step, and the phase in the context", async () => {
    const { phases } = runner();
    for (const [phase, code] of [['preflight', 'PREFLIGHT_FAILED'], ['prepare', 'PREPARE_FAILED'], ['halt', 'HALT_FAILED'], ['finish', 'FINISH_FAILED'], ['materialise', 'MATERIALISE_FAILED']] as const) {
      const error = (await rejection(phases.run(phase, 1000, async () => {
        throw new Error('ENOSPC');
      }))) as ForksnapError;
      expect(error.code).toBe(code);
      expect(error.message).toContain('ENOSPC');
      expect(error.context).toMatchObject({ phase, vm: 'vm1', job: 'j1' });
    }
    expect(phases.records.map((r) => r.ended)).toEqual(['failed', 'failed', 'failed', 'failed', 'failed']);
  });

  it('keeps a ForksnapError as it is, adding only the phase', async () => {
    const { phases } = runner();
    const original = new ForksnapError('VM_BUSY', 'busy', { vm: 'vm1' });
    const error = await rejection(phases.run('preflight', 1000, async () => {
      throw original;
    }));
    expect(error).toBe(original);
    expect(original.context.phase).toBe('preflight');
  });

  it('a cancel is rethrown as the job signal reason, never wrapped (also when the body turns it into another error)', async () => {
    const controller = new AbortController();
    const { phases } = runner(controller.signal);
    const reason = new ForksnapError('CANCELLED', 'Ctrl-C');
    const pending = rejection(phases.run('preflight', 10_000, async ({ signal }) => {
      await new Promise((resolve) => signal.addEventListener('abort', resolve));
      // What a careless catch does: turn the abort into a refusal.
      throw new ForksnapError('VM_NOT_RUNNING', 'VM does not answer');
    }));
    controller.abort(reason);
    expect(await pending).toBe(reason);
    expect(phases.records.at(-1)).toMatchObject({ phase: 'preflight', ended: 'cancelled' });
  });

  it('a timeout is PHASE_TIMEOUT with the phase, recorded as timeout', async () => {
    const { phases } = runner();
    const error = (await rejection(phases.run('shutdown', 30, untilAborted))) as ForksnapError;
    expect(error.code).toBe('PHASE_TIMEOUT');
    expect(error.context).toMatchObject({ phase: 'shutdown', timeoutMs: 30 });
    expect(phases.records.at(-1)).toMatchObject({ ended: 'timeout' });
  });

  it('timeout vs cancel: the first to fire wins and is recorded as it happens', async () => {
    // Timeout first, then a cancel while the body is still unwinding: still a timeout.
    const controller = new AbortController();
    const { phases } = runner(controller.signal);
    const slowToFail = rejection(phases.run('capture', 30, ({ signal }) => new Promise<never>((_, reject) => signal.addEventListener('abort', () => {
      controller.abort(new ForksnapError('CANCELLED', 'late Ctrl-C'));
      setTimeout(() => reject(new Error('migration cancelled')), 20);
    }))));
    expect(((await slowToFail) as ForksnapError).code).toBe('PHASE_TIMEOUT');
    expect(phases.records.at(-1)).toMatchObject({ ended: 'timeout' });

    // Cancel first, then the timeout fires while the body is still unwinding: a cancel.
    const second = new AbortController();
    const { phases: other } = runner(second.signal);
    const reason = new ForksnapError('CANCELLED', 'Ctrl-C');
    const cancelled = rejection(other.run('capture', 40, ({ signal }) => new Promise<never>((_, reject) => signal.addEventListener('abort', () => {
      setTimeout(() => reject(new Error('migration cancelled')), 80);
    }))));
    second.abort(reason);
    expect(await cancelled).toBe(reason);
    expect(other.records.at(-1)).toMatchObject({ ended: 'cancelled' });
  });

  it('a phase started after the cancel sees an aborted signal at once', async () => {
    const controller = new AbortController();
    const reason = new Error('cancelled earlier');
    controller.abort(reason);
    const { phases } = runner(controller.signal);
    expect(await rejection(phases.run('prepare', 1000, untilAborted))).toBe(reason);
  });

  it('a non-cancellable phase (cleanup) runs after a cancel, bounded by its own deadline only', async () => {
    const controller = new AbortController();
    controller.abort(new Error('cancelled'));
    const { phases } = runner(controller.signal);
    await expect(phases.run('cleanup', 1000, async ({ signal }) => signal.aborted, { cancellable: false })).resolves.toBe(false);
    const error = (await rejection(phases.run('cleanup', 30, untilAborted, { cancellable: false }))) as ForksnapError;
    expect(error.code).toBe('PHASE_TIMEOUT');
  });

  it('adds up the durations of a phase that runs twice', async () => {
    const { phases } = runner();
    await phases.run('halt', 1000, () => new Promise((resolve) => setTimeout(resolve, 20)));
    await phases.run('halt', 1000, () => new Promise((resolve) => setTimeout(resolve, 20)));
    expect(phases.durations.halt).toBeGreaterThanOrEqual(38);
    expect(phases.records.filter((r) => r.phase === 'halt')).toHaveLength(2);
  });
});
