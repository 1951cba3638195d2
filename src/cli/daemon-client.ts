import { request as httpRequest } from 'node:http';
import WebSocket from 'ws';
import { ERROR_CODES, ForksnapError, errorMessage, type ErrorCode } from '../errors.js';
import { defaultSocketPath, socketAnswers } from '../server/socket-path.js';
import type { CliContext } from './context.js';

/**
 * The CLI's side of the daemon: JSON requests and the event WebSocket over the unix socket.
 * The daemon is used when its socket answers (default <state>/forksnap.sock, or --socket /
 * $FORKSNAP_SOCKET); otherwise the CLI runs in-process. --no-daemon forces in-process.
 */
export class DaemonClient {
  constructor(readonly socketPath: string) {}

  async request<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = httpRequest({ socketPath: this.socketPath, method, path, headers: { ...headers, ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}) } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      });
      req.on('error', (error) => reject(new ForksnapError('DAEMON_UNREACHABLE', `the daemon at ${this.socketPath} did not answer ${method} ${path}: ${error.message}`, { socket: this.socketPath }, { cause: error })));
      req.end(payload);
    });
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new ForksnapError('DAEMON_UNREACHABLE', `the daemon answered ${method} ${path} with HTTP ${status} and no JSON`, { status });
    }
    if (status >= 400) throw errorFromAnswer(parsed, status);
    return parsed as T;
  }

  /** Open the event WebSocket with initial subscriptions. */
  events(jobs: string[], options: { replay?: boolean } = {}): WebSocket {
    const query = new URLSearchParams(jobs.map((job): [string, string] => ['job', job]));
    if (options.replay) query.set('replay', '1');
    return new WebSocket(`ws+unix://${this.socketPath}:/v1/events?${query}`);
  }
}

/** Rebuild the daemon's error (same code, message and context) so the CLI reports it as in-process. */
export function errorFromAnswer(answer: unknown, status: number): ForksnapError {
  const error = (answer as { error?: { code?: string; message?: string; context?: Record<string, unknown> } } | undefined)?.error;
  const code = error?.code && error.code in ERROR_CODES ? (error.code as ErrorCode) : 'INTERNAL';
  return new ForksnapError(code, error?.message ?? `the daemon answered HTTP ${status}`, error?.context ?? {});
}

const probed = new WeakMap<object, Promise<DaemonClient | undefined>>();

/** The daemon for this invocation, if one answers (probed once per invocation). */
export function daemonFor(context: CliContext): Promise<DaemonClient | undefined> {
  let found = probed.get(context);
  if (!found) {
    found = probe(context);
    probed.set(context, found);
  }
  return found;
}

async function probe(context: CliContext): Promise<DaemonClient | undefined> {
  if (context.values['no-daemon'] === true || process.env.FORKSNAP_NO_DAEMON === '1') return undefined;
  const explicit = context.values.socket as string | undefined;
  const socketPath = explicit ?? process.env.FORKSNAP_SOCKET ?? defaultSocketPath(context.paths);
  if (!(await socketAnswers(socketPath))) {
    if (explicit) throw new ForksnapError('DAEMON_UNREACHABLE', `no daemon answers on ${socketPath} (given with --socket); start one with \`forksnap serve\` or drop --socket to run in-process`, { socket: socketPath });
    return undefined;
  }
  const client = new DaemonClient(socketPath);
  try {
    await client.request('GET', '/v1/health');
  } catch (error) {
    if (explicit) throw error;
    context.log.warn({ socket: socketPath, err: errorMessage(error) }, 'a socket answers but not as a forksnap daemon; running in-process');
    return undefined;
  }
  context.log.debug({ socket: socketPath }, 'using the daemon');
  return client;
}

/** Run `remote` against the daemon if one answers, else `local` in-process. */
export async function viaDaemon<T>(context: CliContext, remote: (client: DaemonClient) => Promise<T>, local: () => Promise<T>): Promise<T> {
  const client = await daemonFor(context);
  return client ? remote(client) : local();
}
