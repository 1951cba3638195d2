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
 * Fan-out of events to subscribers, plus a bounded history of recent events. The history is a
 * record (for logs and failure reports), not a processing queue: a wait that must not miss an event
 * registers a scoped listener (`QmpClient.listen`) before sending the command that triggers it.
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

  /** The most recent events, oldest first (a copy). */
  recent(): QmpEvent[] {
    return [...this.#history];
  }
}
