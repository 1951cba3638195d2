import { pino, type Logger } from 'pino';
import { afterEach } from 'vitest';
import { QemuChildProcess } from '../../src/qemu/child-process.js';
import { fakeQmpPeer, type FakeQmpServer, type FakeQmpServerOptions } from './fake-qmp-server.js';
import type { QmpClient } from '../../src/qmp/client.js';

/**
 * What a unit test file of QMP-talking code sets up: a silent logger, fake QMP peers on real UNIX
 * sockets (fake-qmp-server.ts) and stand-in child processes (`sleep 100`), all torn down after
 * each test in reverse order, together with whatever the test adds to `cleanups`.
 */
export interface FakeQmpPeers {
  readonly log: Logger;
  readonly cleanups: (() => Promise<void> | void)[];
  /** A QMP client connected to a fake peer answering with `handlers`. */
  qmpWith(handlers: FakeQmpServerOptions['handlers']): Promise<{ server: FakeQmpServer; qmp: QmpClient }>;
  /** A real process to stand for a child QEMU (it never exits by itself). */
  sleeper(): QemuChildProcess;
}

export function useFakeQmpPeers(): FakeQmpPeers {
  const log = pino({ level: 'silent' });
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  return {
    log,
    cleanups,
    qmpWith: (handlers) => fakeQmpPeer(handlers, cleanups, log),
    sleeper: () => {
      const child = QemuChildProcess.spawn(['sleep', '100'], log);
      cleanups.push(() => child.terminate(undefined, 500).then(() => undefined));
      return child;
    },
  };
}
