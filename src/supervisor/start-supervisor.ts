import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError, errorMessage } from '../errors.js';
import type { JobJournal } from '../jobs/journal.js';
import { processIdentity, type ProcessIdentity } from '../qemu/process-info.js';

/**
 * The dead-man's switch of one job: a small detached process (own session, setsid) that holds the
 * read end of a pipe from the job process (its stdin). The job tells it `done` once its own
 * clean-up has finished; if the pipe breaks without that (the job SIGKILLed, OOM-killed, the daemon
 * crashed, a SIGHUP it did not survive), the supervisor unwinds the job from its journal
 * (recover-job.ts) and exits. Signals to the job's process group (Ctrl-C, the terminal's SIGHUP)
 * do not reach it; it ignores SIGHUP, SIGINT and SIGTERM anyway. Logs go to
 * <state>/jobs/<job>.supervisor.log, created only when it acts (a plain `done` leaves no file).
 *
 * node:child_process instead of execa: the supervisor must outlive us (detached, unref'd, no
 * cleanup-on-exit), and the protocol is the raw pipe itself.
 */
export interface Supervisor {
  readonly identity: ProcessIdentity;
  /** The job's own clean-up finished: the supervisor exits without acting. */
  done(): Promise<void>;
  /** The job's own clean-up failed part-way: the supervisor unwinds what the journal still holds, now. */
  handOver(): Promise<void>;
}

const HERE = fileURLToPath(import.meta.url);
/** dist/supervisor/main.js; when this module runs from src/ (unit tests through vitest), the built one. */
export const SUPERVISOR_MAIN = HERE.endsWith('.ts') ? path.resolve(path.dirname(HERE), '../../dist/supervisor/main.js') : path.join(path.dirname(HERE), 'main.js');

export const supervisorLogFile = (paths: Paths, job: string) => path.join(paths.stateDir, 'jobs', `${job}.supervisor.log`);

export async function startSupervisor(options: { paths: Paths; job: string; log: Logger; journal?: JobJournal; signal?: AbortSignal }): Promise<Supervisor> {
  const { paths, job, log } = options;
  // Our identity goes on its command line: if we die before it runs, it still knows whom it watched.
  const owner = await processIdentity(process.pid);
  const child = spawn(process.execPath, [SUPERVISOR_MAIN, '--state-dir', paths.stateDir, '--cache-dir', paths.cacheDir, '--job', job, '--owner', String(owner.pid), '--owner-start-time', String(owner.startTime)], {
    detached: true,
    stdio: ['pipe', 'pipe', 'ignore'],
    env: process.env,
  });
  const stdin = child.stdin!;
  const ready = await new Promise<number>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => fail(new Error('no "ready" within 10 s')), 10_000);
    const fail = (error: Error) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new ForksnapError('INTERNAL', `the job's supervisor did not start: ${error.message}`, { job }, { cause: error }));
    };
    child.once('error', fail);
    child.once('exit', (code, signal) => fail(new Error(`exited (${code ?? signal}) before it was ready`)));
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      text += chunk;
      const match = /^ready (\d+)\n/.exec(text);
      if (!match) return;
      clearTimeout(timer);
      child.removeAllListeners('exit');
      child.removeAllListeners('error');
      resolve(Number(match[1]));
    });
    options.signal?.addEventListener('abort', () => fail(new Error('cancelled')), { once: true });
  });
  child.stdout!.destroy();
  // Neither the pipe nor the process may keep the job's event loop alive; the pipe stays open.
  (stdin as unknown as Socket).unref?.();
  stdin.on('error', (error) => log.error({ err: errorMessage(error) }, 'the supervisor pipe broke: the supervisor died?'));
  child.on('exit', (code, signal) => log.info({ code, signal }, 'the job\'s supervisor exited'));
  child.unref();
  const identity = await processIdentity(ready);
  await options.journal?.update(() => ({ supervisor: identity }));
  log.info({ pid: ready }, 'supervisor started');

  let sent = false;
  const send = async (message: 'done' | 'recover') => {
    if (sent) return;
    sent = true;
    await new Promise<void>((resolve) => stdin.end(`${message}\n`, () => resolve()));
  };
  return { identity, done: () => send('done'), handOver: () => send('recover') };
}
