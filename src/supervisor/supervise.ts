import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { errorMessage } from '../errors.js';
import { readJournal } from '../jobs/journal.js';
import { recoverJob, type RecoveryResult } from '../jobs/recover-job.js';
import { isSameProcess, type ProcessIdentity } from '../qemu/process-info.js';
import { sleep } from '../util/abort.js';

/**
 * The supervisor's protocol, on its stdin (the job holds the write end):
 *   "done\n" then EOF     the job cleaned up by itself: exit without acting
 *   "recover\n" then EOF  the job's clean-up failed part-way: unwind what the journal holds, now
 *   EOF without either    the job died: wait until its process is really gone, then unwind
 * Unwinding retries failed steps for up to `retryMs`, then leaves the journal to the next job or
 * the daemon's start-up (recoverInterruptedJobs).
 */
export type PipeOutcome = 'done' | 'recover' | 'broken';

export function readPipe(input: NodeJS.ReadableStream): Promise<PipeOutcome> {
  return new Promise((resolve) => {
    let text = '';
    input.setEncoding('utf8');
    input.on('data', (chunk: string) => (text += chunk));
    const settle = () => resolve(/^done$/m.test(text) ? 'done' : /^recover$/m.test(text) ? 'recover' : 'broken');
    input.on('end', settle);
    input.on('close', settle);
    input.on('error', settle);
  });
}

export async function supervise(options: {
  paths: Paths;
  job: string;
  owner: ProcessIdentity;
  outcome: PipeOutcome;
  log: Logger;
  retryMs?: number;
}): Promise<RecoveryResult | undefined> {
  const { paths, job, owner, outcome, log } = options;
  const brokeAt = Date.now();
  if (outcome === 'done') {
    log.info({ job }, 'the job finished its own clean-up: nothing to do');
    return undefined;
  }
  if (outcome === 'broken') {
    // The pipe closes when the process exits; its last threads may still be going away.
    for (let i = 0; i < 40 && (await isSameProcess(owner)); i++) await sleep(50);
    if (await isSameProcess(owner)) {
      log.error({ job, owner }, 'the pipe broke but the job process still runs: not touching its VM (the next job or the daemon will recover it once it is gone)');
      return undefined;
    }
    log.warn({ job, owner: owner.pid }, 'the job process died without finishing: unwinding it from its journal');
  } else {
    log.warn({ job }, 'the job handed its unfinished clean-up over: unwinding it from its journal');
  }
  const deadline = brokeAt + (options.retryMs ?? 45_000);
  let result: RecoveryResult | undefined;
  for (let attempt = 1; ; attempt++) {
    let entry;
    try {
      entry = await readJournal(paths, job);
    } catch (error) {
      log.error({ job, err: errorMessage(error) }, 'the journal cannot be read: nothing can be unwound safely');
      return result;
    }
    if (!entry) {
      log.info({ job, attempt }, result ? 'recovery complete: the journal is gone' : 'no journal: the job had nothing to undo');
      return result;
    }
    result = await recoverJob(paths, entry, log, { connectMs: 10_000 });
    log.warn({ job, attempt, ...result, msSincePipeBroke: Date.now() - brokeAt }, 'supervisor recovery attempt');
    if (result.failures.length === 0) return result;
    if (Date.now() > deadline) {
      log.error({ job, failures: result.failures }, 'giving up; the journal is kept for the next job on this VM or the daemon\'s start-up');
      return result;
    }
    await sleep(Math.min(5_000, 500 * attempt));
  }
}
