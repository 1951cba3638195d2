import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { resolvePaths } from '../config.js';
import { errorMessage } from '../errors.js';
import { processIdentity, readBootId } from '../qemu/process-info.js';
import { LazyLogFile } from './lazy-log-file.js';
import { supervisorLogFile } from './start-supervisor.js';
import { readPipe, supervise } from './supervise.js';

/**
 * Entry point of a job's supervisor (started by startSupervisor with process.execPath, detached):
 *   node dist/supervisor/main.js --state-dir DIR --cache-dir DIR --job ID --owner PID --owner-start-time TICKS
 * Prints "ready <pid>" on stdout once it watches, then reads its stdin (see supervise.ts).
 */
const { values } = parseArgs({
  options: { 'state-dir': { type: 'string' }, 'cache-dir': { type: 'string' }, job: { type: 'string' }, owner: { type: 'string' }, 'owner-start-time': { type: 'string' } },
  strict: true,
});
const paths = resolvePaths({ stateDir: values['state-dir'], cacheDir: values['cache-dir'] });
const job = values.job!;
const logFile = supervisorLogFile(paths, job);
// The log file appears only once the supervisor has something to report (a warning: it acts), so a
// job that ends normally leaves nothing behind; the lines before it are kept and written first.
const log = pino({ level: 'info', base: { app: 'forksnap', component: 'supervisor', job }, timestamp: pino.stdTimeFunctions.isoTime }, new LazyLogFile(logFile));

// Signals to the job's process group or session must not stop the switch of a dying job.
for (const signal of ['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGPIPE'] as const) process.on(signal, () => log.info({ signal }, 'signal ignored'));

try {
  // The owner may be dead already (killed while it started us): its identity comes from our argv.
  const owner = values['owner-start-time'] ? { pid: Number(values.owner), startTime: Number(values['owner-start-time']), bootId: await readBootId() } : await processIdentity(Number(values.owner));
  log.info({ owner, pid: process.pid }, 'watching the job');
  const outcome = readPipe(process.stdin);
  process.stdout.write(`ready ${process.pid}\n`);
  const result = await supervise({ paths, job, owner, outcome: await outcome, log });
  process.exitCode = result && result.failures.length > 0 ? 1 : 0;
} catch (error) {
  log.error({ err: errorMessage(error) }, 'the supervisor failed');
  process.exitCode = 1;
}
// Nothing may keep a finished supervisor alive (QMP sockets, timers).
process.exit();
