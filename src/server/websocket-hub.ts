import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { z } from 'zod';
import { errorMessage, isForksnapError } from '../errors.js';
import type { JobEvent } from '../jobs/events.js';
import type { JobEngine } from '../jobs/job-engine.js';
import type { JobRecord } from '../jobs/job-record.js';

/**
 * WebSocket progress at /v1/events. Protocol (JSON text frames, documented in docs/daemon.md):
 *
 *   client -> {"type":"subscribe","job":"<id>"|"*","replay"?:true}   {"type":"unsubscribe","job":…}
 *            (or ?job=<id>|*&replay=1 on the URL)
 *   server -> {"type":"state","jobs":[JobRecord…],"history"?:[JobEvent…]}  first, on each subscribe
 *             (a succeeded job's record and its job-done event carry the snapshot view, with
 *             absolute image paths: store.ts)
 *             {"type":"event","event":JobEvent}     then every event, in seq order per job
 *             {"type":"dropped","count":N,"jobs":[…]} you fell behind; a fresh "state" follows
 *             {"type":"error","code":…,"message":…}
 *
 * A record's lastSeq tells where the live events continue (lastSeq + 1). Publishing never waits
 * for a client: one whose unsent data exceeds the high-water mark is skipped (events counted as
 * dropped) until it has drained, then told and re-synchronised with a state message; one stuck
 * for a minute is disconnected.
 */
export interface HubOptions {
  readonly highWaterBytes: number;
  /** How a job record is shown in "state" messages (the daemon gives its snapshot absolute paths, job-view.ts). */
  readonly present?: (record: JobRecord) => unknown;
  readonly stuckMs?: number;
  readonly heartbeatMs?: number;
}

interface Client {
  readonly ws: WebSocket;
  all: boolean;
  readonly jobs: Set<string>;
  dropped: number;
  readonly droppedJobs: Set<string>;
  droppingSince: number | undefined;
  alive: boolean;
}

const clientMessageSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('subscribe'), job: z.string().min(1), replay: z.boolean().default(false) }),
  z.strictObject({ type: z.literal('unsubscribe'), job: z.string().min(1) }),
]);

export class WebSocketHub {
  readonly #wss = new WebSocketServer({ noServer: true, maxPayload: 16 * 1024 });
  readonly #clients = new Set<Client>();
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #log: Logger;
  readonly #unsubscribe: () => void;

  constructor(private readonly engine: JobEngine, log: Logger, private readonly options: HubOptions) {
    this.#log = log.child({ component: 'websocket' });
    this.#unsubscribe = engine.onEvent((event) => this.publish(event));
    this.#timers.push(setInterval(() => this.#resync(), 200).unref());
    this.#timers.push(setInterval(() => this.#heartbeat(), options.heartbeatMs ?? 30_000).unref());
  }

  get clientCount(): number {
    return this.#clients.size;
  }

  /** Take over an authorised upgrade request for /v1/events. */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer, url: URL): void {
    this.#wss.handleUpgrade(request, socket, head, (ws) => {
      const client: Client = { ws, all: false, jobs: new Set(), dropped: 0, droppedJobs: new Set(), droppingSince: undefined, alive: true };
      this.#clients.add(client);
      ws.on('pong', () => { client.alive = true; });
      ws.on('close', () => this.#clients.delete(client));
      ws.on('error', (error) => this.#log.debug({ err: errorMessage(error) }, 'websocket client error'));
      ws.on('message', (data, isBinary) => this.#receive(client, isBinary ? '' : String(data)));
      const replay = url.searchParams.get('replay') === '1';
      for (const job of url.searchParams.getAll('job')) this.#subscribe(client, job, replay);
    });
  }

  /** Deliver an event to every subscribed client; never blocks, never throws. */
  publish(event: JobEvent): void {
    for (const client of this.#clients) {
      if (client.all || client.jobs.has(event.job)) this.#send(client, { type: 'event', event }, event.job);
    }
  }

  /** Close every connection (1001), forcibly after a second for a client that does not answer. */
  async close(): Promise<void> {
    this.#unsubscribe();
    for (const timer of this.#timers) clearInterval(timer);
    await Promise.all([...this.#clients].map((client) => new Promise<void>((resolve) => {
      if (client.ws.readyState === WebSocket.CLOSED) {
        resolve();
        return;
      }
      const force = setTimeout(() => client.ws.terminate(), 1000);
      client.ws.once('close', () => {
        clearTimeout(force);
        resolve();
      });
      client.ws.close(1001, 'the daemon is shutting down');
    })));
    this.#clients.clear();
    this.#wss.close();
  }

  #present(records: JobRecord[]): unknown[] {
    const present = this.options.present;
    return present ? records.map((record) => present(record)) : records;
  }

  #receive(client: Client, text: string): void {
    let parsed: z.infer<typeof clientMessageSchema>;
    try {
      const result = clientMessageSchema.safeParse(JSON.parse(text));
      if (!result.success) throw new Error(result.error.issues.map((issue) => `${issue.path.join('.') || 'message'}: ${issue.message}`).join('; '));
      parsed = result.data;
    } catch (error) {
      this.#send(client, { type: 'error', code: 'INVALID_INPUT', message: `not a valid message (${errorMessage(error)}); send {"type":"subscribe","job":"<id>" or "*"}` });
      return;
    }
    if (parsed.type === 'subscribe') this.#subscribe(client, parsed.job, parsed.replay);
    else if (parsed.job === '*') client.all = false;
    else client.jobs.delete(parsed.job);
  }

  /** The state is taken and the subscription added in one synchronous step: no event falls between. */
  #subscribe(client: Client, job: string, replay: boolean): void {
    if (job === '*') {
      client.all = true;
      this.#send(client, { type: 'state', jobs: this.#present(this.engine.active()) });
      return;
    }
    let record: JobRecord;
    try {
      record = this.engine.get(job);
    } catch (error) {
      this.#send(client, { type: 'error', code: isForksnapError(error) ? error.code : 'INTERNAL', message: errorMessage(error), job });
      return;
    }
    client.jobs.add(job);
    this.#send(client, { type: 'state', jobs: this.#present([record]), ...(replay ? { history: this.engine.history(job) } : {}) }, job);
  }

  #send(client: Client, message: unknown, job?: string): void {
    if (client.ws.readyState !== WebSocket.OPEN) return;
    if (client.droppingSince !== undefined || client.ws.bufferedAmount > this.options.highWaterBytes) {
      if (client.droppingSince === undefined) {
        client.droppingSince = Date.now();
        this.#log.warn({ bufferedBytes: client.ws.bufferedAmount }, 'websocket client too slow: dropping its events until it catches up');
      }
      client.dropped++;
      if (job) client.droppedJobs.add(job);
      return;
    }
    client.ws.send(JSON.stringify(message));
  }

  /** Clients that fell behind: once drained, tell them what they missed and send fresh state. */
  #resync(): void {
    for (const client of this.#clients) {
      if (client.droppingSince === undefined) continue;
      if (client.ws.bufferedAmount <= this.options.highWaterBytes / 4) {
        const jobs = [...client.droppedJobs];
        const count = client.dropped;
        client.droppingSince = undefined;
        client.dropped = 0;
        client.droppedJobs.clear();
        const states = jobs.flatMap((id) => {
          try {
            return [this.engine.get(id)];
          } catch {
            return [];
          }
        });
        this.#send(client, { type: 'dropped', count, jobs, message: `you fell behind and ${count} message(s) were dropped; the current state follows` });
        this.#send(client, { type: 'state', jobs: this.#present(client.all ? mergeById(this.engine.active(), states) : states) });
      } else if (Date.now() - client.droppingSince > (this.options.stuckMs ?? 60_000)) {
        this.#log.warn('websocket client stuck; disconnecting it');
        client.ws.terminate();
        this.#clients.delete(client);
      }
    }
  }

  #heartbeat(): void {
    for (const client of this.#clients) {
      if (!client.alive) {
        client.ws.terminate();
        this.#clients.delete(client);
        continue;
      }
      client.alive = false;
      client.ws.ping();
    }
  }
}

function mergeById(a: JobRecord[], b: JobRecord[]): JobRecord[] {
  const byId = new Map([...a, ...b].map((record) => [record.id, record]));
  return [...byId.values()];
}
