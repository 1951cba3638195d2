import { describe, expect, it } from 'vitest';
import { EventHub, parseEvent, type QmpEvent } from '../../../src/qmp/events.js';

const event = (name: string, timestampMs: number): QmpEvent => ({ event: name, data: {}, timestampMs });

describe('parseEvent', () => {
  it('turns QEMU seconds + microseconds into milliseconds and defaults data to {}', () => {
    expect(parseEvent({ event: 'STOP', timestamp: { seconds: 1700000000, microseconds: 250500 } })).toEqual({ event: 'STOP', data: {}, timestampMs: 1700000000250.5 });
  });
});

describe('EventHub', () => {
  it('keeps a bounded history as a record, dropping the oldest events', () => {
    const hub = new EventHub(3);
    for (let n = 1; n <= 5; n++) hub.publish(event(`E${n}`, n * 10));
    expect(hub.recent().map((e) => e.event)).toEqual(['E3', 'E4', 'E5']);
  });

  it('fans out to subscribers until they unsubscribe', () => {
    const hub = new EventHub();
    const seen: string[] = [];
    const unsubscribe = hub.subscribe((e) => seen.push(e.event));
    hub.publish(event('A', 1));
    unsubscribe();
    hub.publish(event('B', 2));
    expect(seen).toEqual(['A']);
  });
});
