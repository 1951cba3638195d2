import net from 'node:net';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';

/**
 * A small scripted QMP server on a real UNIX socket, for unit tests of everything that talks QMP.
 * It sends the greeting, answers qmp_capabilities, answers scripted commands, emits events with
 * QEMU-style timestamps, and can drop or corrupt the connection. No internals of forksnap are
 * touched: the client under test goes through its real transport.
 */

export interface QmpCommand {
  readonly execute: string;
  readonly arguments?: Record<string, unknown>;
  readonly id?: unknown;
}

/** What a handler answers: a return value, a QMP error, nothing (the command hangs), or a dropped connection. */
export type QmpReply =
  | { return: unknown }
  | { error: { class: string; desc: string } }
  | { noReply: true }
  | { drop: true };

export type QmpHandler = (args: Record<string, unknown> | undefined, command: QmpCommand) => QmpReply;

export const DEFAULT_GREETING = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 1 }, package: 'Debian 1:7.2+dfsg-7' }, capabilities: ['oob'] },
};

export interface FakeQmpServerOptions {
  /** Socket path; default: qmp.sock in a fresh temporary directory. */
  readonly path?: string;
  /** Greeting object, or a raw line (without newline) to send instead of a JSON greeting. */
  readonly greeting?: object | string;
  readonly handlers?: Record<string, QmpHandler | QmpReply>;
}

export class FakeQmpServer {
  /** Every command received, in order, on any connection (qmp_capabilities included). */
  readonly received: QmpCommand[] = [];
  readonly #handlers = new Map<string, QmpHandler>();
  readonly #sockets = new Set<net.Socket>();
  readonly #waiters: { name: string; resolve: (command: QmpCommand) => void }[] = [];

  private constructor(
    private readonly server: net.Server,
    readonly path: string,
    private readonly greeting: object | string,
    private readonly cleanupDir: (() => Promise<void>) | undefined,
  ) {
    this.handle('qmp_capabilities', { return: {} });
  }

  static async start(options: FakeQmpServerOptions = {}): Promise<FakeQmpServer> {
    let socketPath = options.path;
    let cleanupDir: (() => Promise<void>) | undefined;
    if (!socketPath) {
      const tmp = await dir({ unsafeCleanup: true });
      socketPath = path.join(tmp.path, 'qmp.sock');
      cleanupDir = tmp.cleanup;
    }
    const server = net.createServer();
    const fake = new FakeQmpServer(server, socketPath, options.greeting ?? DEFAULT_GREETING, cleanupDir);
    for (const [name, handler] of Object.entries(options.handlers ?? {})) fake.handle(name, handler);
    server.on('connection', (socket) => fake.#accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return fake;
  }

  /** Script the answer to a command (replaces an earlier script for the same command). */
  handle(command: string, handler: QmpHandler | QmpReply): this {
    this.#handlers.set(command, typeof handler === 'function' ? handler : () => handler);
    return this;
  }

  /** Resolve when a command of that name arrives (or has arrived already). */
  waitForCommand(name: string): Promise<QmpCommand> {
    const seen = this.received.find((command) => command.execute === name);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ name, resolve }));
  }

  commandsNamed(name: string): QmpCommand[] {
    return this.received.filter((command) => command.execute === name);
  }

  get connectionCount(): number {
    return this.#sockets.size;
  }

  /** Emit an event to every connected client. The timestamp defaults to now. */
  emit(event: string, data?: Record<string, unknown>, timestampMs = Date.now()): void {
    const seconds = Math.floor(timestampMs / 1000);
    const microseconds = Math.round((timestampMs - seconds * 1000) * 1000);
    this.sendRaw(JSON.stringify({ event, ...(data ? { data } : {}), timestamp: { seconds, microseconds } }));
  }

  /** Send a raw line (a newline is appended) to every connected client. */
  sendRaw(line: string): void {
    for (const socket of this.#sockets) socket.write(`${line}\n`);
  }

  /** Close every client connection from the server side. */
  dropConnections(): void {
    for (const socket of this.#sockets) socket.destroy();
    this.#sockets.clear();
  }

  async close(): Promise<void> {
    this.dropConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await rm(this.path, { force: true });
    await this.cleanupDir?.();
  }

  #accept(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => {});
    socket.setEncoding('utf8');
    socket.write(`${typeof this.greeting === 'string' ? this.greeting : JSON.stringify(this.greeting)}\n`);
    let buffer = '';
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) this.#answer(socket, JSON.parse(line) as QmpCommand);
      }
    });
  }

  #answer(socket: net.Socket, command: QmpCommand): void {
    this.received.push(command);
    for (const waiter of this.#waiters.filter((w) => w.name === command.execute)) {
      this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
      waiter.resolve(command);
    }
    const handler = this.#handlers.get(command.execute);
    const reply: QmpReply = handler
      ? handler(command.arguments, command)
      : { error: { class: 'CommandNotFound', desc: `The command ${command.execute} has not been found` } };
    if ('noReply' in reply) return;
    if ('drop' in reply) {
      socket.destroy();
      return;
    }
    socket.write(`${JSON.stringify({ ...reply, ...(command.id !== undefined ? { id: command.id } : {}) })}\n`);
  }
}

/** Clean-up functions a test file runs after each test (last registered, first run). */
export type Cleanups = (() => Promise<void> | void)[];

/** A FakeQmpServer with the given handlers and a real QmpClient connected to it, both closed by `cleanups`. */
export async function fakeQmpPeer(handlers: FakeQmpServerOptions['handlers'], cleanups: Cleanups, log: import('pino').Logger): Promise<{ server: FakeQmpServer; qmp: import('../../src/qmp/client.js').QmpClient }> {
  const { QmpClient } = await import('../../src/qmp/client.js');
  const server = await FakeQmpServer.start({ handlers });
  cleanups.push(() => server.close());
  const qmp = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  cleanups.push(() => qmp.close());
  return { server, qmp };
}

/** The error a promise rejects with (fails the test if it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected the promise to reject');
}
