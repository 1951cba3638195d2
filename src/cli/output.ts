import cliProgress from 'cli-progress';
import { ForksnapError, errorMessage } from '../errors.js';
import type { JobEvent } from '../jobs/events.js';

/** How the CLI prints: tables and a progress bar for people, JSON for programs. */

export function printTable(rows: Record<string, string | number | undefined>[], columns: string[]): void {
  if (rows.length === 0) {
    process.stdout.write('(none)\n');
    return;
  }
  const cells = rows.map((row) => columns.map((column) => String(row[column] ?? '-')));
  const widths = columns.map((column, index) => Math.max(column.length, ...cells.map((row) => row[index]!.length)));
  const line = (values: string[]) => values.map((value, index) => value.padEnd(widths[index]!)).join('  ').trimEnd();
  process.stdout.write(`${line(columns.map((column) => column.toUpperCase()))}\n`);
  for (const row of cells) process.stdout.write(`${line(row)}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Renders job events: a progress bar per phase on a TTY (stderr), or one JSON line per event on
 * stdout otherwise (and with --json).
 */
export function eventRenderer(mode: 'tty' | 'json-lines' | 'text'): { onEvent: (event: JobEvent) => void; stop: () => void } {
  if (mode === 'json-lines') {
    return { onEvent: (event) => process.stdout.write(`${JSON.stringify(event)}\n`), stop: () => {} };
  }
  if (mode === 'text') {
    return {
      onEvent: (event) => {
        if (event.type === 'phase-end') process.stderr.write(`  ${event.phase.padEnd(14)} ${event.durationMs} ms\n`);
        else if (event.type === 'parent-resumed') process.stderr.write(`  parent resumed after ${event.downtimeMs} ms of downtime\n`);
        else if (event.type === 'verdict') process.stderr.write(`  consistency: ${event.consistency} (${event.reason})\n`);
        else if (event.type === 'strategy-fallback') process.stderr.write(`  strategy ${event.from} failed (${event.reason}); falling back to ${event.to}\n`);
      },
      stop: () => {},
    };
  }
  const bar = new cliProgress.SingleBar(
    { format: ' {phase} |{bar}| {percentage}% {message}', stream: process.stderr, hideCursor: true, clearOnComplete: false, barsize: 30 },
    cliProgress.Presets.shades_classic,
  );
  let active = false;
  let resumedNote = '';
  const finishBar = () => {
    if (active) bar.stop();
    active = false;
  };
  return {
    onEvent: (event) => {
      switch (event.type) {
        case 'phase-start':
          finishBar();
          bar.start(100, 0, { phase: event.phase.padEnd(13), message: '' });
          active = true;
          break;
        case 'phase-progress':
          if (active) {
            const bytes = event.bytes !== undefined ? `${(event.bytes / 1048576).toFixed(1)} MiB` : '';
            bar.update(event.percent !== undefined ? Math.round(event.percent) : bar.getProgress() * 100, { message: [resumedNote, event.message ?? bytes].filter(Boolean).join(', ') });
          }
          break;
        case 'phase-end':
          if (active) bar.update(100, { message: [`${event.durationMs} ms`, event.phase === 'capture' || event.phase === 'switchover' ? resumedNote : ''].filter(Boolean).join(', ') });
          finishBar();
          break;
        case 'parent-resumed':
          // Shown in the running capture bar: writing a line now would tear the bar.
          resumedNote = `parent resumed after ${event.downtimeMs} ms`;
          if (active) bar.update(bar.getProgress() * 100, { message: resumedNote });
          break;
        case 'strategy-fallback':
          process.stderr.write(`   strategy ${event.from} failed (${event.reason}); falling back to ${event.to}\n`);
          break;
        case 'verdict':
          finishBar();
          process.stderr.write(`   consistency: ${event.consistency} (${event.reason})\n`);
          break;
        case 'job-failed':
          finishBar();
          break;
        default:
          break;
      }
    },
    stop: finishBar,
  };
}

/** Print an error for people (stderr) or programs (--json: stdout) and return the exit code. */
export function reportError(error: unknown, json: boolean): number {
  const forksnapError = error instanceof ForksnapError ? error : new ForksnapError('INTERNAL', errorMessage(error), {}, { cause: error });
  if (json) process.stdout.write(`${JSON.stringify({ error: forksnapError.toJSON() })}\n`);
  else process.stderr.write(`forksnap: error [${forksnapError.code}]: ${forksnapError.message}\n`);
  return forksnapError.exitCode;
}
