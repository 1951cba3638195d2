import net from 'node:net';
import { ForksnapError } from '../errors.js';
import { sleep } from '../util/abort.js';

/**
 * Line-framed JSON over a UNIX stream socket. QMP messages are one JSON object per line
 * (QEMU never emits raw newlines inside a message). This layer knows nothing of QMP.
 */
export class QmpTransport {
  #buffer = '';
  #closed = false;
  #onMessage: (message: unknown) => void = () => {};
  #onClose: (error?: Error) => void = () => {};

  private constructor(private readonly socket: net.Socket, readonly path: string) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#receive(chunk));
    socket.on('error', (error) => this.#close(error));
    socket.on('close', () => this.#close());
  }

  /** Connect, retrying while the socket does not exist yet (QEMU still starting) until the signal aborts. */
  static async connect(path: string, signal: AbortSignal, retryMs = 25): Promise<QmpTransport> {
    for (;;) {
      if (signal.aborted) throw signal.reason;
      try {
        const socket = await connectOnce(path, signal);
        return new QmpTransport(socket, path);
      } catch (error) {
        if (signal.aborted) throw signal.reason;
        const code = (error as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ECONNREFUSED') {
          throw new ForksnapError('QMP_CONNECT_FAILED', `cannot connect to QMP socket ${path}: ${(error as Error).message}`, { socket: path }, { cause: error });
        }
        await sleep(retryMs, signal);
      }
    }
  }

  onMessage(handler: (message: unknown) => void): void {
    this.#onMessage = handler;
  }

  onClose(handler: (error?: Error) => void): void {
    this.#onClose = handler;
  }

  get closed(): boolean {
    return this.#closed;
  }

  send(message: object): void {
    if (this.#closed) throw new ForksnapError('QMP_DISCONNECTED', `QMP socket ${this.path} is closed`, { socket: this.path });
    this.socket.write(`${JSON.stringify(message)}\n`);
  }

  close(): void {
    this.socket.destroy();
    this.#close();
  }

  #receive(chunk: string): void {
    this.#buffer += chunk;
    let newline: number;
    while ((newline = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, newline).trim();
      this.#buffer = this.#buffer.slice(newline + 1);
      if (line.length === 0) continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch (error) {
        this.#close(new ForksnapError('QMP_PROTOCOL', `QEMU sent a line that is not JSON: ${line.slice(0, 200)}`, { socket: this.path }, { cause: error }));
        this.socket.destroy();
        return;
      }
      this.#onMessage(parsed);
    }
  }

  #close(error?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#onClose(error);
  }
}

function connectOnce(path: string, signal: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path });
    const onAbort = () => {
      socket.destroy();
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      signal.removeEventListener('abort', onAbort);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error) => {
      signal.removeEventListener('abort', onAbort);
      reject(error);
    });
  });
}
