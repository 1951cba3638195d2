import { ForksnapError } from '../errors.js';
import type { QmpEvent } from './events.js';

/**
 * A scoped subscription to QMP events, the way QEMU's python/qemu/qmp does it
 * (`with qmp.listener('STOP'): ...`): created BEFORE the command that triggers the event is sent,
 * it queues every event it accepts from then on until `next()` consumes it. So an event that QEMU
 * sends before the command's reply (a small block job can be READY before `block-commit` returns)
 * is never missed, and nothing depends on comparing QEMU's clock with ours.
 *
 * States: open -> closed (by `close()`, or failed with QMP_DISCONNECTED when the connection drops).
 */
export type EventFilter = readonly string[] | ((event: QmpEvent) => boolean);

interface Waiter {
  readonly predicate: (event: QmpEvent) => boolean;
  resolve(event: QmpEvent): void;
  reject(error: unknown): void;
}

export class EventListener implements Disposable {
  readonly #accepts: (event: QmpEvent) => boolean;
  readonly #queue: QmpEvent[] = [];
  readonly #waiters = new Set<Waiter>();
  #failure: Error | undefined;
  #closed = false;

  /** @param detach called once when the listener closes, to unsubscribe it from its client. */
  constructor(filter: EventFilter | undefined, private readonly detach: () => void) {
    this.#accepts = filter === undefined ? () => true : typeof filter === 'function' ? filter : (event) => filter.includes(event.event);
  }

  /** Events received and not consumed yet (a copy). */
  get pending(): readonly QmpEvent[] {
    return [...this.#queue];
  }

  /** Called by the client for every event it receives. */
  deliver(event: QmpEvent): void {
    if (this.#closed || !this.#accepts(event)) return;
    for (const waiter of this.#waiters) {
      if (!waiter.predicate(event)) continue;
      this.#waiters.delete(waiter);
      waiter.resolve(event);
      return;
    }
    this.#queue.push(event);
  }

  /**
   * The first queued (or future) event matching `predicate`, removed from the queue; events that do
   * not match stay queued for other `next()` calls. Rejects with `signal.reason` on abort, with
   * QMP_DISCONNECTED when the connection dropped, and when the listener is closed.
   */
  next(predicate: (event: QmpEvent) => boolean = () => true, signal?: AbortSignal): Promise<QmpEvent> {
    const index = this.#queue.findIndex(predicate);
    if (index >= 0) return Promise.resolve(this.#queue.splice(index, 1)[0]!);
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#closed) return Promise.reject(new ForksnapError('INTERNAL', 'event listener is closed'));
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#waiters.delete(waiter);
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        predicate,
        resolve: (event) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(event);
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      this.#waiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** The connection dropped: every waiter, present and future, fails with `error`. */
  fail(error: Error): void {
    if (this.#closed) return;
    this.#failure = error;
    this.#finish(error);
  }

  close(): void {
    if (this.#closed) return;
    this.#finish(new ForksnapError('INTERNAL', 'event listener closed while waiting'));
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #finish(error: Error): void {
    this.#closed = true;
    this.detach();
    for (const waiter of [...this.#waiters]) waiter.reject(error);
    this.#waiters.clear();
  }
}
