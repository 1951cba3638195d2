import type { Server } from 'node:http';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { Paths } from '../../../src/config.js';
import { JobEngine } from '../../../src/jobs/job-engine.js';
import { jobRequestSchema } from '../../../src/jobs/job-record.js';
import type { RunJobOptions, SnapshotResult } from '../../../src/jobs/run-job.js';
import { apiRouter } from '../../../src/server/api-routes.js';
import { closeServer, createHttpServer, listenUnix } from '../../../src/server/http-server.js';
import { DaemonMetrics } from '../../../src/server/metrics.js';
import { WebSocketHub } from '../../../src/server/websocket-hub.js';
import { saveVm } from '../../../src/vm/registry.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

/**
 * The WebSocket hub on a real unix socket with real clients: a client that stops reading must not
 * slow anything down; it is skipped while behind, then told what it missed and re-synchronised.
 */
const log = pino({ level: 'silent' });
let tmp: TempPaths;
let paths: Paths;
let engine: JobEngine;
let hub: WebSocketHub;
let server: Server;
let socketPath: string;
let running: RunJobOptions | undefined;

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
  await saveVm(paths, { name: 'vm1', origin: 'attached', qmpSocket: '/nonexistent.sock', disks: [], createdAt: new Date().toISOString() });
  engine = new JobEngine({ paths, log, maxConcurrent: 1, run: (options) => { running = options; return new Promise<SnapshotResult>(() => {}); } });
  await engine.start();
  hub = new WebSocketHub(engine, log, { highWaterBytes: 64 * 1024 });
  server = createHttpServer({ router: apiRouter({ paths, log, engine, startedAt: '', version: 'test' }), hub, metrics: new DaemonMetrics(engine), log, maxBodyBytes: 65536 }, undefined);
  socketPath = path.join(tmp.root, 'd.sock');
  await listenUnix(server, socketPath);
});
afterEach(async () => {
  await hub.close();
  await closeServer(server);
  await tmp.cleanup();
});

function connect(query: string): Promise<{ ws: WebSocket; messages: any[] }> {
  const ws = new WebSocket(`ws+unix://${socketPath}:/v1/events?${query}`);
  const messages: any[] = [];
  ws.on('message', (data) => messages.push(JSON.parse(String(data))));
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws, messages }));
    ws.once('error', reject);
  });
}

async function until(probe: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('WebSocketHub', () => {
  it('skips a client that stops reading without slowing the job, then tells it and sends fresh state; others get everything', async () => {
    const job = await engine.submit(jobRequestSchema.parse({ vm: 'vm1' }));
    const slow = await connect('job=*');
    const fast = await connect(`job=${job.id}`);
    await until(() => slow.messages.length >= 1 && fast.messages.length >= 1);
    expect(slow.messages[0]).toMatchObject({ type: 'state', jobs: [{ id: job.id, status: 'running' }] });
    const slowSocket = (slow.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
    slowSocket.pause();

    // 2000 events of 8 KiB, 10 at a time with a turn of the event loop in between (so the fast
    // client, in this same process, can read): publishing never waits for the slow one.
    const filler = 'x'.repeat(8 * 1024);
    let longestBatchMs = 0;
    for (let i = 0; i < 2000; i++) {
      const started = performance.now();
      running!.events.emit({ type: 'phase-progress', phase: 'capture', percent: i / 20, bytes: i, message: filler });
      longestBatchMs = Math.max(longestBatchMs, performance.now() - started);
      if (i % 10 === 9) await new Promise((resolve) => setTimeout(resolve, 1));
    }
    expect(longestBatchMs, 'one publish takes no time, whoever is behind').toBeLessThan(50);
    const lastSeq = engine.get(job.id).lastSeq;

    await until(() => fast.messages.some((m) => m.type === 'event' && m.event.seq === lastSeq));
    const fastSeqs = fast.messages.filter((m) => m.type === 'event').map((m) => m.event.seq);
    expect(fastSeqs).toEqual(Array.from({ length: lastSeq - 1 }, (_, i) => i + 2)); // seq 1 (accepted) was in its state

    slowSocket.resume();
    await until(() => slow.messages.some((m) => m.type === 'dropped'));
    await until(() => slow.messages.findIndex((m) => m.type === 'dropped') < slow.messages.length - 1);
    const droppedAt = slow.messages.findIndex((m) => m.type === 'dropped');
    const dropped = slow.messages[droppedAt];
    expect(dropped).toMatchObject({ type: 'dropped', jobs: [job.id] });
    expect(dropped.count).toBeGreaterThan(100);
    const resync = slow.messages[droppedAt + 1];
    expect(resync).toMatchObject({ type: 'state', jobs: [{ id: job.id, lastSeq, progress: { phase: 'capture', percent: 99.95 } }] });
    const delivered = slow.messages.slice(1, droppedAt).map((m) => m.event.seq);
    expect(delivered, 'what was delivered before falling behind is in order and gap-free').toEqual(Array.from({ length: delivered.length }, (_, i) => i + 2));
    expect(delivered.length + dropped.count).toBe(2000);

    // Back in step: new events flow again.
    running!.events.emit({ type: 'phase-end', phase: 'capture', durationMs: 1 });
    await until(() => slow.messages.some((m) => m.type === 'event' && m.event.seq === lastSeq + 1));
    slow.ws.close();
    fast.ws.close();
  });

  it('answers bad messages and unknown jobs with an error message, and unsubscribes', async () => {
    const job = await engine.submit(jobRequestSchema.parse({ vm: 'vm1' }));
    const client = await connect('');
    client.ws.send('not json');
    client.ws.send(JSON.stringify({ type: 'subscribe' }));
    client.ws.send(JSON.stringify({ type: 'subscribe', job: 'nope' }));
    client.ws.send(JSON.stringify({ type: 'subscribe', job: job.id, replay: true }));
    await until(() => client.messages.length >= 4);
    expect(client.messages.slice(0, 3).map((m) => [m.type, m.code])).toEqual([['error', 'INVALID_INPUT'], ['error', 'INVALID_INPUT'], ['error', 'JOB_NOT_FOUND']]);
    expect(client.messages[3]).toMatchObject({ type: 'state', jobs: [{ id: job.id }], history: [{ type: 'job-accepted', seq: 1 }] });
    client.ws.send(JSON.stringify({ type: 'unsubscribe', job: job.id }));
    await new Promise((resolve) => setTimeout(resolve, 100));
    running!.events.emit({ type: 'phase-start', phase: 'preflight' });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(client.messages).toHaveLength(4);
    client.ws.close();
  });
});
