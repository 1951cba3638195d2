import path from 'node:path';
import { pino } from 'pino';
import { dir } from 'tmp-promise';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ForksnapError } from '../../../src/errors.js';
import { QmpClient } from '../../../src/qmp/client.js';
import { QmpError } from '../../../src/qmp/errors.js';
import { FakeQmpServer, rejection } from '../../helpers/fake-qmp-server.js';

const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startServer(options: Parameters<typeof FakeQmpServer.start>[0] = {}): Promise<FakeQmpServer> {
  const server = await FakeQmpServer.start(options);
  cleanups.push(() => server.close());
  return server;
}

async function connect(server: FakeQmpServer, timeoutMs = 2000): Promise<QmpClient> {
  const client = await QmpClient.connect(server.path, { log, timeoutMs });
  cleanups.push(() => client.close());
  return client;
}


async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 2000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met within 2 s');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('QmpClient connection', () => {
  it('reads the greeting, negotiates capabilities and becomes ready', async () => {
    const server = await startServer();
    const client = await connect(server);
    expect(client.state).toBe('ready');
    expect(client.version).toEqual({ major: 7, minor: 2, micro: 1 });
    expect(client.socketPath).toBe(server.path);
    expect(server.received.map((command) => command.execute)).toEqual(['qmp_capabilities']);
  });

  it('retries while the socket file does not exist yet', async () => {
    const tmp = await dir({ unsafeCleanup: true });
    cleanups.push(() => tmp.cleanup());
    const socket = path.join(tmp.path, 'late.sock');
    const connecting = QmpClient.connect(socket, { log, timeoutMs: 3000 });
    await new Promise((resolve) => setTimeout(resolve, 150));
    const server = await startServer({ path: socket });
    const client = await connecting;
    cleanups.push(() => client.close());
    expect(client.state).toBe('ready');
    expect(server.commandsNamed('qmp_capabilities')).toHaveLength(1);
  });

  it('gives up with QMP_CONNECT_FAILED when the socket never appears', async () => {
    const tmp = await dir({ unsafeCleanup: true });
    cleanups.push(() => tmp.cleanup());
    const socket = path.join(tmp.path, 'never.sock');
    const started = performance.now();
    const error = await rejection(QmpClient.connect(socket, { log, timeoutMs: 200 }));
    expect(performance.now() - started).toBeGreaterThanOrEqual(150);
    expect(error).toBeInstanceOf(ForksnapError);
    expect((error as ForksnapError).code).toBe('QMP_CONNECT_FAILED');
    expect((error as ForksnapError).context).toMatchObject({ socket });
    expect(((error as ForksnapError).cause as ForksnapError).code).toBe('PHASE_TIMEOUT');
  });

  it('rejects the caller signal reason, not a wrapped error, when connecting is cancelled', async () => {
    const tmp = await dir({ unsafeCleanup: true });
    cleanups.push(() => tmp.cleanup());
    const controller = new AbortController();
    const reason = new Error('user cancelled');
    const connecting = QmpClient.connect(path.join(tmp.path, 'never.sock'), { log, timeoutMs: 5000, signal: controller.signal });
    setTimeout(() => controller.abort(reason), 50);
    expect(await rejection(connecting)).toBe(reason);
  });

  it('refuses a greeting that is not QMP with QMP_PROTOCOL', async () => {
    const server = await startServer({ greeting: { hello: 'world' } });
    const error = await rejection(connect(server));
    expect(error).toBeInstanceOf(QmpError);
    expect((error as QmpError).code).toBe('QMP_PROTOCOL');
    expect((error as QmpError).received).toEqual({ hello: 'world' });
  });

  it('refuses a greeting line that is not JSON with QMP_PROTOCOL', async () => {
    const server = await startServer({ greeting: 'this is not json' });
    const error = await rejection(connect(server));
    expect((error as ForksnapError).code).toBe('QMP_PROTOCOL');
    expect((error as Error).message).toContain('this is not json');
  });

  it('fails with QMP_DISCONNECTED naming qmp_capabilities when the server drops during negotiation', async () => {
    const server = await startServer();
    server.handle('qmp_capabilities', { drop: true });
    const error = await rejection(connect(server));
    expect((error as ForksnapError).code).toBe('QMP_DISCONNECTED');
    expect((error as QmpError).sent).toEqual({ execute: 'qmp_capabilities' });
  });
});

describe('QmpClient.execute', () => {
  it('resolves with the return value and sends the arguments with a unique id', async () => {
    const server = await startServer();
    server.handle('query-status', { return: { running: true, status: 'running' } });
    server.handle('echo', (args) => ({ return: args }));
    const client = await connect(server);
    await expect(client.execute('query-status')).resolves.toEqual({ running: true, status: 'running' });
    await expect(client.execute('echo', { value: 42, nested: { a: [1, 2] } })).resolves.toEqual({ value: 42, nested: { a: [1, 2] } });
    const [status, echo] = [server.commandsNamed('query-status')[0]!, server.commandsNamed('echo')[0]!];
    expect(status.arguments).toBeUndefined();
    expect(echo.arguments).toEqual({ value: 42, nested: { a: [1, 2] } });
    const ids = server.received.map((command) => command.id);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('matches replies to commands by id even when they arrive out of order', async () => {
    const server = await startServer();
    let slowId: unknown;
    server.handle('slow', (_args, command) => {
      slowId = command.id;
      return { noReply: true };
    });
    server.handle('fast', { return: 'fast' });
    const client = await connect(server);
    const slow = client.execute('slow');
    await server.waitForCommand('slow');
    await expect(client.execute('fast')).resolves.toBe('fast');
    server.sendRaw(JSON.stringify({ return: 'slow', id: slowId }));
    await expect(slow).resolves.toBe('slow');
  });

  it('turns an error reply into QmpError QMP_COMMAND_FAILED with the class and the sent command', async () => {
    const server = await startServer();
    server.handle('blockdev-del', { error: { class: 'GenericError', desc: "Node 'x' is busy" } });
    const client = await connect(server);
    const error = await rejection(client.execute('blockdev-del', { 'node-name': 'x' }));
    expect(error).toBeInstanceOf(QmpError);
    const qmpError = error as QmpError;
    expect(qmpError.code).toBe('QMP_COMMAND_FAILED');
    expect(qmpError.errorClass).toBe('GenericError');
    expect(qmpError.sent).toEqual({ execute: 'blockdev-del', arguments: { 'node-name': 'x' } });
    expect(qmpError.received).toMatchObject({ error: { class: 'GenericError', desc: "Node 'x' is busy" } });
    expect(qmpError.message).toContain("Node 'x' is busy");
    expect(qmpError.context).toMatchObject({ qmpCommand: 'blockdev-del', qmpArguments: { 'node-name': 'x' }, errorClass: 'GenericError' });
    // The connection stays usable after a failed command.
    server.handle('query-status', { return: { running: false, status: 'paused' } });
    await expect(client.execute('query-status')).resolves.toEqual({ running: false, status: 'paused' });
  });

  it('rejects every pending command with QMP_DISCONNECTED when the server drops the connection', async () => {
    const server = await startServer();
    server.handle('hang', { noReply: true });
    const client = await connect(server);
    const first = rejection(client.execute('hang', { n: 1 }));
    const second = rejection(client.execute('hang', { n: 2 }));
    await until(() => server.commandsNamed('hang').length === 2);
    server.dropConnections();
    const errors = (await Promise.all([first, second])) as QmpError[];
    expect(errors.map((error) => error.code)).toEqual(['QMP_DISCONNECTED', 'QMP_DISCONNECTED']);
    expect(errors.map((error) => error.sent)).toEqual([
      { execute: 'hang', arguments: { n: 1 } },
      { execute: 'hang', arguments: { n: 2 } },
    ]);
    await client.closed;
    expect(client.state).toBe('closed');
  });

  it('refuses to send once the connection is closed', async () => {
    const server = await startServer();
    const client = await connect(server);
    server.dropConnections();
    await client.closed;
    const error = await rejection(client.execute('query-status'));
    expect((error as QmpError).code).toBe('QMP_DISCONNECTED');
    expect((error as QmpError).sent).toEqual({ execute: 'query-status' });
    expect(server.commandsNamed('query-status')).toHaveLength(0);
  });

  it('rejects with the abort reason itself when the signal aborts, and ignores the late reply', async () => {
    const server = await startServer();
    let hungId: unknown;
    server.handle('hang', (_args, command) => {
      hungId = command.id;
      return { noReply: true };
    });
    const client = await connect(server);
    const controller = new AbortController();
    const reason = new Error('stop waiting');
    const pending = rejection(client.execute('hang', undefined, { signal: controller.signal }));
    await server.waitForCommand('hang');
    controller.abort(reason);
    expect(await pending).toBe(reason);
    // A late reply to the abandoned command must not disturb the client.
    server.sendRaw(JSON.stringify({ return: {}, id: hungId }));
    server.handle('query-status', { return: { running: true, status: 'running' } });
    await expect(client.execute('query-status')).resolves.toMatchObject({ running: true });
  });

  it('does not send a command whose signal is already aborted', async () => {
    const server = await startServer();
    const client = await connect(server);
    const reason = new Error('already cancelled');
    const error = await rejection(client.execute('query-status', undefined, { signal: AbortSignal.abort(reason) }));
    expect(error).toBe(reason);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(server.commandsNamed('query-status')).toHaveLength(0);
  });

  it('validates the reply with the schema and fails with QMP_PROTOCOL when it does not match', async () => {
    const server = await startServer();
    server.handle('query-status', { return: { running: 'yes' } });
    const client = await connect(server);
    const schema = z.object({ running: z.boolean(), status: z.string() });
    const error = await rejection(client.execute('query-status', undefined, { schema }));
    expect(error).toBeInstanceOf(QmpError);
    expect((error as QmpError).code).toBe('QMP_PROTOCOL');
    expect((error as QmpError).sent).toEqual({ execute: 'query-status' });
    expect((error as QmpError).received).toEqual({ running: 'yes' });
    server.handle('query-status', { return: { running: true, status: 'running', extra: 1 } });
    await expect(client.execute('query-status', undefined, { schema })).resolves.toEqual({ running: true, status: 'running' });
  });

  it('runs human monitor commands and returns their text', async () => {
    const server = await startServer();
    server.handle('human-monitor-command', (args) => ({ return: `ran ${String(args?.['command-line'])}\r\n` }));
    const client = await connect(server);
    await expect(client.hmp('info network')).resolves.toBe('ran info network\r\n');
  });

  it('closes with a QMP_PROTOCOL cause when QEMU sends a line that is not JSON', async () => {
    const server = await startServer();
    server.handle('hang', { noReply: true });
    const client = await connect(server);
    const pending = rejection(client.execute('hang'));
    await server.waitForCommand('hang');
    server.sendRaw('{"return": oops');
    const error = (await pending) as QmpError;
    expect(error.code).toBe('QMP_DISCONNECTED');
    expect((error.cause as ForksnapError).code).toBe('QMP_PROTOCOL');
    expect((error.cause as Error).message).toContain('{"return": oops');
    await client.closed;
    expect(client.state).toBe('closed');
  });
});

describe('QmpClient events', () => {
  it('publishes events with QEMU timestamps converted to milliseconds', async () => {
    const server = await startServer();
    const client = await connect(server);
    const seen: unknown[] = [];
    client.events.subscribe((event) => seen.push(event));
    const listener = client.listen(['STOP', 'RESUME']);
    server.emit('STOP', undefined, 1_700_000_000_123.456);
    const event = await listener.next((e) => e.event === 'STOP', AbortSignal.timeout(2000));
    expect(event.event).toBe('STOP');
    expect(event.data).toEqual({});
    expect(event.timestampMs).toBeCloseTo(1_700_000_000_123.456, 3);
    server.emit('RESUME', { reason: 'x' }, 1_700_000_001_000);
    await listener.next((e) => e.event === 'RESUME', AbortSignal.timeout(2000));
    expect(seen).toEqual([
      expect.objectContaining({ event: 'STOP' }),
      { event: 'RESUME', data: { reason: 'x' }, timestampMs: 1_700_000_001_000 },
    ]);
    expect(client.events.recent().map((e) => e.event)).toEqual(['STOP', 'RESUME']);
  });

  it('a listener registered before the command sees an event QEMU sends before the reply, whatever its timestamp', async () => {
    // A small block job is READY before block-commit returns; QEMU's clock may differ from ours.
    const server = await startServer();
    const client = await connect(server);
    server.handle('block-commit', () => {
      server.emit('BLOCK_JOB_READY', { device: 'commit0' }, 1_000); // a timestamp far in the past
      return { return: {} };
    });
    const jobEvents = client.listen((event) => event.data.device === 'commit0');
    await client.execute('block-commit');
    await expect(jobEvents.next((e) => e.event === 'BLOCK_JOB_READY', AbortSignal.timeout(500))).resolves.toMatchObject({ data: { device: 'commit0' }, timestampMs: 1_000 });
    jobEvents.close();
  });

  it('queues only events after listen() that pass its filter; next() takes the first match and leaves the rest queued', async () => {
    const server = await startServer();
    const client = await connect(server);
    const early = client.listen(['MARKER']);
    server.emit('STOP', { n: 0 });
    server.emit('MARKER');
    await early.next(undefined, AbortSignal.timeout(2000));
    const listener = client.listen(['STOP', 'RESUME']);
    server.emit('SHUTDOWN');
    server.emit('RESUME', { n: 1 });
    server.emit('STOP', { n: 2 });
    server.emit('STOP', { n: 3 });
    server.emit('MARKER');
    await early.next(undefined, AbortSignal.timeout(2000));
    expect(listener.pending.map((e) => e.data.n)).toEqual([1, 2, 3]);
    await expect(listener.next((e) => e.event === 'STOP', AbortSignal.timeout(500))).resolves.toMatchObject({ data: { n: 2 } });
    await expect(listener.next(undefined, AbortSignal.timeout(500))).resolves.toMatchObject({ event: 'RESUME', data: { n: 1 } });
    await expect(listener.next(undefined, AbortSignal.timeout(500))).resolves.toMatchObject({ data: { n: 3 } });
    expect(listener.pending).toEqual([]);
  });

  it('a closed listener stops queueing and fails its waiters; `using` closes it', async () => {
    const server = await startServer();
    const client = await connect(server);
    const listener = client.listen();
    const waiting = rejection(listener.next((e) => e.event === 'NEVER', AbortSignal.timeout(5000)));
    listener.close();
    expect(((await waiting) as Error).message).toMatch(/closed/);
    server.emit('STOP');
    const marker = client.listen(['STOP']);
    server.emit('STOP');
    await marker.next(undefined, AbortSignal.timeout(2000));
    expect(listener.pending).toEqual([]);
    {
      using scoped = client.listen(['X']);
      expect(scoped.pending).toEqual([]);
      marker.close();
    }
  });

  it('listeners fail with QMP_DISCONNECTED when the connection drops, also ones created afterwards; queued events stay readable', async () => {
    const server = await startServer();
    const client = await connect(server);
    const listener = client.listen();
    server.emit('STOP');
    await until(() => listener.pending.length === 1);
    const waiting = rejection(listener.next((event) => event.event === 'SHUTDOWN', AbortSignal.timeout(5000)));
    server.dropConnections();
    const error = (await waiting) as QmpError;
    expect(error).toBeInstanceOf(QmpError);
    expect(error.code).toBe('QMP_DISCONNECTED');
    await expect(listener.next((e) => e.event === 'STOP')).resolves.toMatchObject({ event: 'STOP' });
    await client.closed;
    const late = client.listen();
    expect(((await rejection(late.next())) as QmpError).code).toBe('QMP_DISCONNECTED');
  });

  it('next() rejects with the abort reason when its signal aborts, and the listener stays usable', async () => {
    const server = await startServer();
    const client = await connect(server);
    const controller = new AbortController();
    const reason = new Error('gave up');
    const listener = client.listen(['SHUTDOWN']);
    const waiting = rejection(listener.next(undefined, controller.signal));
    controller.abort(reason);
    expect(await waiting).toBe(reason);
    expect(await rejection(listener.next(undefined, AbortSignal.abort(reason)))).toBe(reason);
    server.emit('SHUTDOWN', { guest: true });
    await expect(listener.next(undefined, AbortSignal.timeout(2000))).resolves.toMatchObject({ data: { guest: true } });
  });
});
