import net from 'node:net';
import path from 'node:path';
import type { Paths } from '../config.js';

/** Where the daemon listens by default, and whether something answers there. */
export const defaultSocketPath = (paths: Paths) => path.join(paths.stateDir, 'forksnap.sock');

export function socketAnswers(socketPath: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.createConnection({ path: socketPath });
    const done = (answer: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
