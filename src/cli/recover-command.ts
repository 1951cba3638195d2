import { recoverInterruptedJobs } from '../jobs/recover-job.js';
import { validateName } from '../validate-name.js';
import { refuseExtra, type CliContext } from './context.js';
import { printJson } from './output.js';

const USAGE = 'forksnap recover [VM]';

/**
 * `forksnap recover [VM]`: unwind every interrupted job (its process is gone) from its journal, as
 * the daemon does at start-up: the parent resumed if the job paused it, the child killed, what the
 * disk backends added removed, migration settings restored, the job's files deleted. Exit 1 if a
 * step failed (the journal is kept; run it again).
 */
export async function recoverCommand(context: CliContext, rest: string[]): Promise<number> {
  const [vmArg, ...extra] = rest;
  refuseExtra(extra, USAGE);
  const vm = vmArg ? validateName('VM', vmArg) : undefined;
  const results = await recoverInterruptedJobs(context.paths, context.log, vm);
  if (context.json) printJson({ recovered: results });
  else if (results.length === 0) process.stdout.write(`nothing to recover${vm ? ` for VM "${vm}"` : ''}\n`);
  else {
    for (const result of results) {
      process.stdout.write(`job ${result.job} (VM ${result.vm}):\n`);
      for (const action of result.actions) process.stdout.write(`  done: ${action}\n`);
      for (const failure of result.failures) process.stdout.write(`  FAILED: ${failure}\n`);
    }
  }
  return results.some((result) => result.failures.length > 0) ? 1 : 0;
}
