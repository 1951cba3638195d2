import { request as httpRequest } from 'node:http';
import { execa, type ResultPromise } from 'execa';
import WebSocket from 'ws';
import { CLI } from './forksnap-cli.js';

/**
 * The real daemon as a separate process (`node bin/forksnap.js serve`), its JSON API over the unix
 * socket or TCP, and a WebSocket client that records every message. Tests kill what they start.
 */
export interface DaemonProcess {
  readonly process: ResultPromise;
  readonly pid: number;
  readonly socket: string;
  readonly tcp: { host: string; port: number } | null;
  /** stderr so far (pino JSON logs), for failure messages. */
  logs(): string;
  /**
   * Send a signal with process.kill (not execa's kill(), which follows a SIGTERM with a SIGKILL
   * after 5 s: a daemon letting a job finish must not be killed for it).
   */
  signal(name: NodeJS.Signals): void;
}

export async function spawnDaemon(stateDir: string, args: string[] = [], env: Record<string, string> = {}): Promise<DaemonProcess> {
  const child = execa('node', [CLI, 'serve', ...args], {
    reject: false,
    env: { FORKSNAP_STATE_DIR: stateDir, FORKSNAP_LOG_LEVEL: 'info', ...env },
    buffer: false,
    stdin: 'ignore',
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-200_000);
  });
  const listening = await new Promise<{ socket: string; tcp: { host: string; port: number } | null }>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`daemon did not start within 60 s: ${stderr.slice(-3000)}`));
    }, 60_000);
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => {
      out += chunk;
      const line = out.split('\n').find((l) => l.includes('"listening"'));
      if (line) {
        clearTimeout(timer);
        resolve((JSON.parse(line) as { listening: { socket: string; tcp: { host: string; port: number } | null } }).listening);
      }
    });
    void child.then((result) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited (${result.exitCode ?? result.signal}) before listening: ${stderr.slice(-3000)}`));
    });
  });
  return { process: child, pid: child.pid!, socket: listening.socket, tcp: listening.tcp, logs: () => stderr, signal: (name) => process.kill(child.pid!, name) };
}

export interface ApiAnswer {
  status: number;
  body: any;
  headers: Record<string, string | string[] | undefined>;
}

/** One HTTP request to the daemon, over its unix socket or (with `tcp`) over TCP. */
export function api(target: { socket: string } | { host: string; port: number }, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiAnswer> {
  const payload = body === undefined ? undefined : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      ...('socket' in target ? { socketPath: target.socket } : { host: target.host, port: target.port }),
      method,
      path,
      headers: { ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}), ...headers },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON (page, metrics)
        }
        resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** A WebSocket client that keeps every message, with waits on them. */
export class EventClient {
  readonly messages: any[] = [];
  readonly #waiters: { match: (message: any) => boolean; resolve: (message: any) => void }[] = [];
  closed = false;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const message = JSON.parse(String(data));
      this.messages.push(message);
      for (const waiter of [...this.#waiters]) {
        if (waiter.match(message)) {
          this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
          waiter.resolve(message);
        }
      }
    });
    ws.on('close', () => { this.closed = true; });
    ws.on('error', () => {});
  }

  static async connect(url: string, headers: Record<string, string> = {}): Promise<EventClient> {
    const ws = new WebSocket(url, { headers });
    const client = new EventClient(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`WebSocket upgrade refused: HTTP ${res.statusCode}`)));
    });
    return client;
  }

  static unix(socket: string, query: string): Promise<EventClient> {
    return EventClient.connect(`ws+unix://${socket}:/v1/events?${query}`);
  }

  events(job?: string): any[] {
    return this.messages.filter((m) => m.type === 'event' && (!job || m.event.job === job)).map((m) => m.event);
  }

  waitFor(match: (message: any) => boolean, timeoutMs = 120_000): Promise<any> {
    const found = this.messages.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching WebSocket message within ${timeoutMs} ms; last: ${JSON.stringify(this.messages.slice(-3))}`)), timeoutMs);
      this.#waiters.push({ match, resolve: (message) => { clearTimeout(timer); resolve(message); } });
    });
  }

  waitForEvent(job: string, type: string, extra: (event: any) => boolean = () => true, timeoutMs?: number): Promise<any> {
    return this.waitFor((m) => m.type === 'event' && m.event.job === job && m.event.type === type && extra(m.event), timeoutMs).then((m) => m.event);
  }

  send(message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message));
  }

  close(): void {
    this.ws.close();
  }
}

/** Poll a job until it has finished. */
export async function waitForJob(target: { socket: string }, id: string, timeoutMs = 180_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const answer = await api(target, 'GET', `/v1/jobs/${id}`);
    if (['succeeded', 'failed', 'cancelled'].includes(answer.body?.status)) return answer.body;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${answer.body?.status} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
