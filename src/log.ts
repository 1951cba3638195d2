import { pino, type Logger, type DestinationStream } from 'pino';

/**
 * The one pino root. Logs go to stderr (fd 2) by default so stdout stays for command output,
 * or to a file given by FORKSNAP_LOG_FILE / --log-file. Child loggers carry {vm, job, phase}.
 */
let root: Logger | undefined;

export function configureLogging(options: { level?: string; file?: string } = {}): Logger {
  const level = options.level ?? process.env.FORKSNAP_LOG_LEVEL ?? 'info';
  const file = options.file ?? process.env.FORKSNAP_LOG_FILE;
  const destination: DestinationStream = file
    ? pino.destination({ dest: file, mkdir: true, sync: true })
    : pino.destination({ fd: 2, sync: true });
  root = pino({ level, base: { app: 'forksnap' }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
  return root;
}

export function rootLogger(): Logger {
  return root ?? configureLogging();
}

export type { Logger };
