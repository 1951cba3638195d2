import { z } from 'zod';

/** A QMP asynchronous event, with QEMU's own timestamp turned into milliseconds since the epoch. */
export interface QmpEvent {
  readonly event: string;
  readonly data: Record<string, unknown>;
  /** QEMU's host-clock timestamp of the event, in ms (microsecond precision). */
  readonly timestampMs: number;
}

export const qmpEventWire = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }),
});

export function parseEvent(wire: z.infer<typeof qmpEventWire>): QmpEvent {
  return {
    event: wire.event,
    data: wire.data ?? {},
    timestampMs: wire.timestamp.seconds * 1000 + wire.timestamp.microseconds / 1000,
  };
}

type Listener = (event: QmpEvent) => void;

/**
 * Fan-out of events to listeners, plus a history of recent events so a waiter that subscribes
 * a little late (after sending the command that triggers the event) still sees it.
 */
export class EventHub {
  readonly #listeners = new Set<Listener>();
  readonly #history: QmpEvent[] = [];

  constructor(private readonly historyLimit = 256) {}

  publish(event: QmpEvent): void {
    this.#history.push(event);
    if (this.#history.length > this.historyLimit) this.#history.shift();
    for (const listener of [...this.#listeners]) listener(event);
  }

  /** Listen until the returned function is called. */
  subscribe(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Events seen so far whose timestamp is at or after `sinceMs` (host clock). */
  since(sinceMs: number): QmpEvent[] {
    return this.#history.filter((event) => event.timestampMs >= sinceMs);
  }

  /**
   * Resolve with the first event matching `predicate` (looking back into history from `sinceMs`
   * if given). Rejects with `signal.reason` on abort, or with `closedError()` when the hub closes.
   */
  waitFor(predicate: (event: QmpEvent) => boolean, signal: AbortSignal, sinceMs?: number): Promise<QmpEvent> {
    if (sinceMs !== undefined) {
      const seen = this.since(sinceMs).find(predicate);
      if (seen) return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = () => {
        unsubscribe();
        reject(signal.reason);
      };
      const unsubscribe = this.subscribe((event) => {
        if (!predicate(event)) return;
        unsubscribe();
        signal.removeEventListener('abort', onAbort);
        resolve(event);
      });
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}
