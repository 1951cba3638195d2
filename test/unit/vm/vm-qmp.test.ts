import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { openVmQmp } from '../../../src/vm/vm-qmp.js';
import { DEFAULT_GREETING } from '../../helpers/fake-qmp-server.js';

const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * A QMP socket like QEMU's (and Proxmox's /var/run/qemu-server/ID.qmp): one client at a time; a
 * second connection is accepted by the kernel but gets no greeting until the first one leaves.
 */
async function singleClientQmp(): Promise<{ socket: string; occupy: () => Promise<() => void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fs-vmqmp-'));
  const socket = path.join(dir, 'qmp.sock');
  const waiting: net.Socket[] = [];
  let busy = false;
  const serve = (client: net.Socket) => {
    busy = true;
    client.write(`${JSON.stringify(DEFAULT_GREETING)}\r\n`);
    client.setEncoding('utf8');
    client.on('data', (chunk: string) => {
      for (const line of chunk.split('\n').filter((text) => text.trim())) {
        const command = JSON.parse(line) as { id?: string };
        client.write(`${JSON.stringify({ return: {}, id: command.id })}\r\n`);
      }
    });
    client.on('close', () => {
      busy = false;
      const next = waiting.shift();
      if (next) serve(next);
    });
    client.on('error', () => undefined);
  };
  const server = net.createServer((client) => (busy ? waiting.push(client) : serve(client)));
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  cleanups.push(async () => {
    for (const client of waiting) client.destroy();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });
  return {
    socket,
    occupy: async () => {
      const holder = net.connect(socket);
      await new Promise((resolve) => holder.once('data', resolve));
      return () => holder.destroy();
    },
  };
}

const paths = { stateDir: '/nonexistent', cacheDir: '/nonexistent' };

describe('openVmQmp on a single-client QMP socket (QEMU, Proxmox)', () => {
  it('connects for the operation and frees the socket on close', async () => {
    const qmp = await singleClientQmp();
    const connection = await openVmQmp(paths, 'vm1', { kind: 'socket', path: qmp.socket }, { log });
    await connection.qmp.execute('query-status');
    connection.close();
    const release = await qmp.occupy();
    release();
  });

  it('waits for a client that holds the socket briefly (Proxmox asks per command)', async () => {
    const qmp = await singleClientQmp();
    const release = await qmp.occupy();
    setTimeout(release, 1_500);
    const started = Date.now();
    const connection = await openVmQmp(paths, 'vm1', { kind: 'socket', path: qmp.socket }, { log, busyTimeoutMs: 10_000 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_400);
    await connection.qmp.execute('query-status');
    connection.close();
  }, 20_000);

  it('gives up on a socket held for longer with VM_BUSY naming the socket', async () => {
    const qmp = await singleClientQmp();
    const release = await qmp.occupy();
    cleanups.push(release);
    const error = await openVmQmp(paths, 'vm1', { kind: 'socket', path: qmp.socket }, { log, busyTimeoutMs: 3_500 }).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(ForksnapError);
    expect((error as ForksnapError).code).toBe('VM_BUSY');
    expect((error as ForksnapError).message).toContain(qmp.socket);
  }, 20_000);

  it('a cancel during the wait comes out as the cancel', async () => {
    const qmp = await singleClientQmp();
    const release = await qmp.occupy();
    cleanups.push(release);
    const cancel = new AbortController();
    setTimeout(() => cancel.abort(new Error('cancelled by the test')), 500);
    await expect(openVmQmp(paths, 'vm1', { kind: 'socket', path: qmp.socket }, { log, signal: cancel.signal, busyTimeoutMs: 10_000 })).rejects.toThrow('cancelled by the test');
  }, 20_000);
});
