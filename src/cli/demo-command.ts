import { STRATEGY_NAMES, type StrategyName } from '../forker/strategy.js';
import { JobEventStream } from '../jobs/events.js';
import { newJobId } from '../jobs/snapshot-job.js';
import { runDemo } from '../demo/run-demo.js';
import { runDbDemo } from '../demo/run-db-demo.js';
import { ForksnapError } from '../errors.js';
import type { CliContext } from './context.js';
import { eventRenderer, printJson } from './output.js';

/** `forksnap demo`: see src/demo/run-demo.ts. Exit 0 only when the verification holds. */
export async function demoCommand(context: CliContext): Promise<number> {
  const { values, json, log, signal } = context;
  const memoryText = (values.memory as string | undefined) ?? '512';
  if (!/^\d+$/.test(memoryText) || Number(memoryText) < 128) throw new ForksnapError('INVALID_INPUT', `--memory must be a number of MiB >= 128, not "${memoryText}"`, {});
  const strategy = (values.strategy as string | undefined) ?? 'auto';
  if (strategy !== 'auto' && !STRATEGY_NAMES.includes(strategy as StrategyName)) throw new ForksnapError('INVALID_INPUT', `--strategy must be one of auto, ${STRATEGY_NAMES.join(', ')}`, {});
  const events = new JobEventStream(newJobId());
  const renderer = eventRenderer(json ? 'json-lines' : process.stderr.isTTY ? 'tty' : 'text');
  events.subscribe(renderer.onEvent);
  const print = (line: string) => (json ? undefined : process.stdout.write(`${line}\n`));
  if (values.db === true) return dbDemo(context, strategy as StrategyName | 'auto', events, print, () => renderer.stop());
  const result = await runDemo({ memoryMiB: Number(memoryText), strategy: strategy as StrategyName | 'auto', log, signal, events, keep: values.keep === true, print }).finally(() => renderer.stop());
  const verified = result.consistency === 'clean' && !result.snapshot.needsRecovery && result.snapshot.shutdownMarker && result.snapshot.ticks >= result.tickAtHalt && result.crashImage.needsRecovery;
  if (json) {
    printJson({ ...result, verified });
  } else {
    print('');
    print(`strategy ${result.strategy}, disk backend ${result.diskBackend}, guest RAM ${result.memoryMiB} MiB`);
    print(`parent downtime:            ${result.downtimeMs} ms (the guest kept ticking: ${result.parentTicksAfter} after the snapshot)`);
    // fork-postcopy: the child runs on the device state; its RAM follows on demand.
    print(result.strategy === 'fork-postcopy'
      ? `child had the device state: ${result.timeToStateMs} ms after the halt (its RAM came on demand)`
      : `child had the full state:   ${result.timeToStateMs} ms after the halt`);
    print(`snapshot image ready:       ${result.timeToImageMs} ms after the halt`);
    print('');
    print(row('', 'forksnap snapshot', 'disk-only snapshot of the same instant'));
    print(row('ext4 needs journal recovery', yesNo(result.snapshot.needsRecovery), yesNo(result.crashImage.needsRecovery)));
    print(row("guest's shutdown marker", result.snapshot.shutdownMarker ? 'present' : 'missing', result.crashImage.shutdownMarker ? 'present' : 'missing'));
    print(row(`last tick on disk (halt ~${result.tickAtHalt})`, String(result.snapshot.ticks), String(result.crashImage.ticks)));
    print('');
    print(verified ? `VERIFIED: the snapshot is ${result.consistency}: cleanly unmounted, with the data that was only in the guest's page cache at the halt.` : `NOT VERIFIED: consistency ${result.consistency}; see above.`);
  }
  return verified ? 0 : 1;
}

function row(label: string, snapshot: string, crash: string): string {
  return `${label.padEnd(32)}${snapshot.padEnd(20)}${crash}`;
}

function yesNo(value: boolean): string {
  return value ? 'YES' : 'no';
}

/** `forksnap demo --db`: see src/demo/run-db-demo.ts. Exit 0 only when the DB proof holds. */
async function dbDemo(context: CliContext, strategy: StrategyName | 'auto', events: JobEventStream, print: (line: string) => void, stopRenderer: () => void): Promise<number> {
  const result = await runDbDemo({ strategy, log: context.log, signal: context.signal, events, keep: context.values.keep === true, print }).finally(stopRenderer);
  const holdsAll = result.snapshot.maxN >= result.lastAckBeforeHalt && result.snapshot.maxN < result.firstAckAfterResume;
  const verified = result.consistency === 'clean' && result.snapshot.verdict === 'clean' && holdsAll;
  if (context.json) {
    printJson({ ...result, verified });
    return verified ? 0 : 1;
  }
  print('');
  print(`strategy ${result.strategy}: parent downtime ${result.parentDowntimeMs} ms; the DB client's longest gap between acknowledged transactions ${result.clientGapMs} ms`);
  print(`load (transactions/s): before ${result.ratesPerSecond.before.toFixed(1)}, during the capture ${result.ratesPerSecond.during.toFixed(1)}, after ${result.ratesPerSecond.after.toFixed(1)}`);
  print(`last transaction acknowledged before the halt: ${result.lastAckBeforeHalt}; first acknowledged by the parent after resuming: ${result.firstAckAfterResume}`);
  for (const [label, verdict] of [['forksnap snapshot', result.snapshot], ['disk-only snapshot', result.crashImage]] as const) {
    print('');
    print(`${label}: PostgreSQL start-up: ${verdict.verdict === 'clean' ? 'clean (shut down normally)' : verdict.verdict === 'recovery' ? 'CRASH RECOVERY' : 'unknown'}; table max(n) = ${verdict.maxN}, ${verdict.rows} rows`);
    for (const line of verdict.logLines) print(`  | ${line}`);
  }
  print('');
  print(verified ? 'VERIFIED: PostgreSQL in the snapshot starts without recovery and holds every transaction acknowledged before the halt, none from after.' : 'NOT VERIFIED: see above.');
  return verified ? 0 : 1;
}
