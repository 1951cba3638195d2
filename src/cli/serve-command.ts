import { ForksnapError } from '../errors.js';
import { loadToken } from '../server/auth.js';
import { startDaemon } from '../server/daemon.js';
import { loadDaemonConfig } from '../server/load-config.js';
import { defaultSocketPath } from '../server/socket-path.js';
import { refuseExtra, type CliContext } from './context.js';

const USAGE = 'forksnap serve [--config FILE] [--socket PATH] [--listen HOST:PORT --token-file FILE] [--max-concurrent-jobs N]';

/**
 * `forksnap serve`: the long-running daemon. Prints one JSON line {"listening": …} on stdout once
 * it accepts requests; logs (pino JSON) go to stderr. The first SIGTERM/SIGINT/SIGHUP stops accepting
 * jobs and lets running ones finish within jobs.shutdownGraceSeconds (then cancels and unwinds
 * them); a second one cancels them at once.
 */
export async function serveCommand(context: CliContext, rest: string[]): Promise<number> {
  refuseExtra(rest, USAGE);
  const { values, paths, log } = context;
  const { config, file } = await loadDaemonConfig(values.config as string | undefined);
  const socketPath = (values.socket as string | undefined) ?? process.env.FORKSNAP_SOCKET ?? config.server.socket ?? defaultSocketPath(paths);
  const listen = values.listen as string | undefined;
  let tcp = config.server.tcp ? { host: config.server.tcp.host, port: config.server.tcp.port } : undefined;
  if (listen !== undefined) {
    const match = /^(.+):(\d{1,5})$/.exec(listen);
    if (!match || Number(match[2]) > 65535) throw new ForksnapError('INVALID_INPUT', `--listen must be HOST:PORT (e.g. 127.0.0.1:8470), not "${listen}"`, { listen });
    tcp = { host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(match[2]) };
  }
  const maxText = values['max-concurrent-jobs'] as string | undefined;
  if (maxText !== undefined) {
    if (!/^\d+$/.test(maxText) || Number(maxText) < 1 || Number(maxText) > 64) throw new ForksnapError('INVALID_INPUT', `--max-concurrent-jobs must be a whole number from 1 to 64, not "${maxText}"`, {});
    config.jobs.maxConcurrent = Number(maxText);
  }
  const token = tcp ? await loadToken((values['token-file'] as string | undefined) ?? config.server.tcp?.tokenFile) : undefined;
  const daemon = await startDaemon({ paths, log, config, socketPath, tcp: tcp && token ? { ...tcp, token } : undefined });
  process.stdout.write(`${JSON.stringify({ listening: { socket: daemon.socketPath, tcp: daemon.tcp ?? null, pid: process.pid, config: file ?? null } })}\n`);

  let signals = 0;
  const onSignal = () => {
    signals++;
    if (signals === 2) {
      log.warn('second signal: cancelling running jobs now (they are unwound before exit)');
      daemon.engine.cancelAll('the daemon was told to stop at once');
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', onSignal);
  try {
    await new Promise<void>((resolve) => {
      if (context.signal.aborted) resolve();
      else context.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await daemon.stop(config.jobs.shutdownGraceSeconds * 1000);
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    process.off('SIGHUP', onSignal);
  }
  return 0;
}
