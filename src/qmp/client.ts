import type { Logger } from 'pino';
import { z } from 'zod';
import { ForksnapError } from '../errors.js';
import { timeoutSignal } from '../util/abort.js';
import { QmpError } from './errors.js';
import { EventListener, type EventFilter } from './event-listener.js';
import { EventHub, parseEvent, qmpEventWire } from './events.js';
import { QmpTransport } from './transport.js';

/**
 * QMP semantics on top of the transport: greeting, capabilities negotiation, commands with ids,
 * events. Pending commands live in a map keyed by id and all fail with QMP_DISCONNECTED when the
 * connection drops, as do the scoped event listeners (`listen()`).
 *
 * States: connecting -> ready -> closed. Commands are only sent in `ready`.
 */
export type QmpClientState = 'connecting' | 'ready' | 'closed';

const greetingWire = z.object({ QMP: z.object({ version: z.object({ qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }) }) }) });
const returnWire = z.object({ return: z.unknown(), id: z.string() });
const errorWire = z.object({ error: z.object({ class: z.string(), desc: z.string() }), id: z.string().optional() });

interface Pending {
  readonly sent: { execute: string; arguments?: unknown };
  resolve(value: unknown): void;
  reject(error: Error): void;
}

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

export class QmpClient {
  #state: QmpClientState = 'connecting';
  #nextId = 1;
  readonly #pending = new Map<string, Pending>();
  /** Every event received, fanned out; its history is a record only (waits use `listen()`). */
  readonly events = new EventHub();
  readonly #listeners = new Set<EventListener>();
  #closeError: Error | undefined;
  readonly #closed: Promise<void>;
  #markClosed!: () => void;
  version: QemuVersion | undefined;

  private constructor(private readonly transport: QmpTransport, private readonly log: Logger) {
    this.#closed = new Promise((resolve) => (this.#markClosed = resolve));
    transport.onClose((error) => this.#handleClose(error));
  }

  /** Connect to a QMP UNIX socket (retrying while it does not exist yet) and negotiate capabilities. */
  static async connect(path: string, options: { log: Logger; signal?: AbortSignal; timeoutMs?: number }): Promise<QmpClient> {
    const timeout = timeoutSignal(options.timeoutMs ?? 10_000, `connecting to QMP at ${path}`, options.signal, { socket: path });
    let transport: QmpTransport | undefined;
    try {
      transport = await QmpTransport.connect(path, timeout.signal);
      const client = new QmpClient(transport, options.log.child({ qmp: path }));
      await client.#handshake(timeout.signal);
      return client;
    } catch (error) {
      transport?.close();
      if (options.signal?.aborted) throw options.signal.reason;
      if (error instanceof ForksnapError && error.code !== 'PHASE_TIMEOUT') throw error;
      throw new ForksnapError('QMP_CONNECT_FAILED', `cannot talk QMP on ${path}: ${(error as Error).message}`, { socket: path }, { cause: error });
    } finally {
      timeout.dispose();
    }
  }

  get state(): QmpClientState {
    return this.#state;
  }

  get socketPath(): string {
    return this.transport.path;
  }

  /** Resolves when the connection is gone (QEMU exited or we closed it). */
  get closed(): Promise<void> {
    return this.#closed;
  }

  async #handshake(signal: AbortSignal): Promise<void> {
    const greeting = await new Promise<unknown>((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      this.transport.onMessage((message) => {
        signal.removeEventListener('abort', onAbort);
        resolve(message);
      });
      this.transport.onClose((error) => {
        signal.removeEventListener('abort', onAbort);
        reject(error ?? new ForksnapError('QMP_CONNECT_FAILED', 'QMP socket closed before the greeting (another client connected?)', { socket: this.transport.path }));
        this.#handleClose(error);
      });
    });
    const parsed = greetingWire.safeParse(greeting);
    if (!parsed.success) throw new QmpError('QMP_PROTOCOL', `unexpected QMP greeting: ${JSON.stringify(greeting).slice(0, 200)}`, { execute: '(greeting)' }, greeting);
    this.version = parsed.data.QMP.version.qemu;
    this.transport.onMessage((message) => this.#dispatch(message));
    this.transport.onClose((error) => this.#handleClose(error));
    this.#state = 'ready';
    await this.execute('qmp_capabilities', undefined, { signal });
  }

  /**
   * Send a command and resolve with its `return` value (validated by `schema` when given).
   * Rejects with QmpError on an error reply or a dropped connection, with `signal.reason` on abort
   * (the command may still run in QEMU: aborting only stops waiting).
   */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { signal?: AbortSignal; schema?: z.ZodType<T> } = {}): Promise<T> {
    const sent = args === undefined ? { execute: command } : { execute: command, arguments: args };
    if (this.#state !== 'ready') {
      throw new QmpError('QMP_DISCONNECTED', `cannot send ${command}: QMP connection is ${this.#state}`, sent, undefined, undefined, { cause: this.#closeError });
    }
    const id = `fs-${this.#nextId++}`;
    const started = performance.now();
    const reply = await new Promise<unknown>((resolve, reject) => {
      const signal = options.signal;
      const onAbort = () => {
        this.#pending.delete(id);
        reject(signal!.reason);
      };
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#pending.set(id, {
        sent,
        resolve: (value) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(value);
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      });
      this.log.debug({ qmpSend: sent, id }, 'qmp send');
      this.transport.send({ ...sent, id });
    });
    this.log.debug({ qmpCommand: command, id, durationMs: +(performance.now() - started).toFixed(2) }, 'qmp return');
    if (!options.schema) return reply as T;
    const parsed = options.schema.safeParse(reply);
    if (!parsed.success) {
      throw new QmpError('QMP_PROTOCOL', `unexpected reply to ${command}: ${parsed.error.message}`, sent, reply);
    }
    return parsed.data;
  }

  /** Run a human-monitor command (for information QMP does not expose, e.g. `info network`). */
  async hmp(commandLine: string, signal?: AbortSignal): Promise<string> {
    return this.execute('human-monitor-command', { 'command-line': commandLine }, { signal, schema: z.string() });
  }

  /**
   * A scoped event listener: register it BEFORE sending the command whose event you wait for, then
   * `listener.next(predicate, signal)`; close it (or `using` it) when done. It queues every event
   * (matching `filter`) received after this call and fails with QMP_DISCONNECTED when the
   * connection drops.
   */
  listen(filter?: EventFilter): EventListener {
    const listener = new EventListener(filter, () => this.#listeners.delete(listener));
    if (this.#state === 'closed') {
      listener.fail(this.#disconnected('(listen for events)'));
      return listener;
    }
    this.#listeners.add(listener);
    return listener;
  }

  close(): void {
    this.transport.close();
  }

  #dispatch(message: unknown): void {
    const event = qmpEventWire.safeParse(message);
    if (event.success) {
      const parsed = parseEvent(event.data);
      this.log.debug({ qmpEvent: parsed.event, data: parsed.data }, 'qmp event');
      this.events.publish(parsed);
      for (const listener of [...this.#listeners]) listener.deliver(parsed);
      return;
    }
    const ok = returnWire.safeParse(message);
    if (ok.success) {
      const pending = this.#pending.get(ok.data.id);
      this.#pending.delete(ok.data.id);
      pending?.resolve(ok.data.return);
      return;
    }
    const failure = errorWire.safeParse(message);
    if (failure.success && failure.data.id !== undefined) {
      const pending = this.#pending.get(failure.data.id);
      this.#pending.delete(failure.data.id);
      if (pending) {
        const { class: errorClass, desc } = failure.data.error;
        pending.reject(new QmpError('QMP_COMMAND_FAILED', `QEMU refused ${pending.sent.execute}: ${desc}`, pending.sent, message, errorClass));
      }
      return;
    }
    this.log.warn({ message }, 'unexpected QMP message');
  }

  #handleClose(error?: Error): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#closeError = error;
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id);
      pending.reject(new QmpError('QMP_DISCONNECTED', `QMP connection closed while ${pending.sent.execute} was pending`, pending.sent, undefined, undefined, { cause: error }));
    }
    for (const listener of [...this.#listeners]) listener.fail(this.#disconnected('(wait for event)'));
    this.#markClosed();
  }

  #disconnected(what: string): QmpError {
    return new QmpError('QMP_DISCONNECTED', 'QMP connection closed while waiting for an event', { execute: what }, undefined, undefined, { cause: this.#closeError });
  }
}
