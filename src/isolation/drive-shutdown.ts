import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { QemuChildProcess } from '../qemu/child-process.js';
import type { QmpClient } from '../qmp/client.js';
import type { QmpEvent } from '../qmp/events.js';
import { withDeadline } from '../util/abort.js';

/**
 * Let the child guest shut itself down: `cont`, press the ACPI power button, and wait for the
 * guest's own poweroff (SHUTDOWN event with reason "guest-shutdown") under a timeout. On timeout
 * press again and wait a grace period; then `quit`. Only a guest-initiated poweroff is labelled
 * `clean`; anything else (timeout, reset, panic, QEMU dying) is `crash-consistent`.
 */
export type Consistency = 'clean' | 'crash-consistent';

export interface ShutdownOutcome {
  readonly consistency: Consistency;
  readonly reason: string;
  readonly presses: number;
  readonly guestShutdownMs: number | undefined;
}

export async function driveShutdown(
  child: QmpClient,
  childProcess: QemuChildProcess,
  options: { timeoutMs: number; graceMs?: number; signal: AbortSignal; log: Logger; onProgress?: (message: string) => void; onRunning?: () => void },
): Promise<ShutdownOutcome> {
  const { signal, log } = options;
  const graceMs = options.graceMs ?? Math.min(30_000, Math.max(2_000, options.timeoutMs / 4));
  // Registered before `cont` and the first press: a guest can power off faster than the reply.
  const shutdowns = child.listen(['SHUTDOWN']);
  try {
    return await pressAndWait(child, childProcess, shutdowns.next((event) => event.data.guest === true, signal), { ...options, graceMs });
  } finally {
    shutdowns.close();
  }
}

async function pressAndWait(
  child: QmpClient,
  childProcess: QemuChildProcess,
  guestShutdown: Promise<QmpEvent>,
  options: { timeoutMs: number; graceMs: number; signal: AbortSignal; log: Logger; onProgress?: (message: string) => void; onRunning?: () => void },
): Promise<ShutdownOutcome> {
  const { signal, log, graceMs } = options;
  const shutdownEvent = guestShutdown.then(
    (event) => ({ kind: 'shutdown' as const, reason: String(event.data.reason ?? 'unknown'), at: event.timestampMs }),
    (error: unknown) => {
      if (signal.aborted) throw signal.reason;
      return { kind: 'gone' as const, reason: errorMessage(error), at: Date.now() };
    },
  );
  // Handled here too: if `cont` fails, nobody awaits the wait.
  shutdownEvent.catch((error: unknown) => log.debug({ err: errorMessage(error) }, 'shutdown wait ended without the event'));
  const exited = childProcess.exited.then((exit) => ({ kind: 'exited' as const, reason: `QEMU exited (${exit.exitCode ?? exit.signal})`, at: Date.now() }));
  const within = (ms: number) => withDeadline(shutdownEvent, ms, () => ({ kind: 'timeout' as const, reason: '', at: Date.now() }), signal);

  const started = Date.now();
  await child.execute('cont', undefined, { signal });
  options.onRunning?.();
  await child.execute('system_powerdown', undefined, { signal });
  let presses = 1;
  options.onProgress?.('power button pressed');
  let outcome = await within(options.timeoutMs);
  if (outcome.kind === 'timeout') {
    log.warn({ timeoutMs: options.timeoutMs }, 'guest did not power off; pressing the power button again');
    options.onProgress?.(`no poweroff after ${options.timeoutMs} ms; pressing again`);
    if (child.state === 'ready') {
      await child.execute('system_powerdown', undefined, { signal }).catch((error: unknown) => {
        if (signal.aborted) throw signal.reason;
        log.warn({ err: errorMessage(error) }, 'second power-button press failed');
      });
    }
    presses++;
    outcome = await within(graceMs);
  }
  if (outcome.kind === 'shutdown') {
    // QEMU exits by itself after a guest poweroff; wait so the images are closed before they are read.
    await withDeadline(exited, 15_000, () => undefined, signal);
    const clean = outcome.reason === 'guest-shutdown';
    return {
      consistency: clean ? 'clean' : 'crash-consistent',
      reason: clean ? 'the guest powered off by itself after the power button' : `the guest stopped with reason ${outcome.reason}, not an orderly poweroff`,
      presses,
      guestShutdownMs: outcome.at - started,
    };
  }
  const reason = outcome.kind === 'timeout'
    ? `the guest did not power off within ${options.timeoutMs + graceMs} ms after ${presses} presses of the power button; the child was stopped`
    : `the child QEMU went away before the guest powered off: ${outcome.reason}`;
  if (child.state === 'ready') {
    await child.execute('quit', undefined, { signal }).catch((error: unknown) => {
      if (signal.aborted) throw signal.reason;
      log.warn({ err: errorMessage(error) }, 'quit refused or unanswered; the job stops the child QEMU by signal');
    });
  }
  return { consistency: 'crash-consistent', reason, presses, guestShutdownMs: undefined };
}
