import { statfs } from 'node:fs/promises';
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';

/**
 * A free-space watch of one filesystem while a point-in-time view is alive: the fleecing image
 * (fleecing backend) or the extents a reflink clone pins (reflink backend) grow with every guest
 * write. When the free space falls under the reserve, `onLow` is called once and the watch stops;
 * the caller breaks the snapshot (never the guest's write) and the job fails with NO_SPACE.
 *
 * statfs every `intervalMs` (default 100 ms): the reserve must cover what the guest can write in
 * one interval plus the time to break the view. A failing statfs is logged and retried, never
 * taken for "low".
 */
export const DEFAULT_WATCH_INTERVAL_MS = 100;

export interface SpaceWatchOptions {
  /** Any path on the filesystem to watch. */
  readonly path: string;
  readonly reserveBytes: number;
  readonly intervalMs?: number;
  readonly log: Logger;
  /** Called once, with a sentence saying how much is left. */
  readonly onLow: (why: string, freeBytes: number) => void;
}

/** Free bytes as an unprivileged writer sees them (bavail). */
export async function freeBytes(path: string): Promise<number> {
  const fs = await statfs(path);
  return fs.bavail * fs.bsize;
}

/** Start watching; returns the function that stops the watch (idempotent). */
export function watchFreeSpace(options: SpaceWatchOptions): () => void {
  const intervalMs = options.intervalMs ?? DEFAULT_WATCH_INTERVAL_MS;
  let stopped = false;
  let busy = false;
  let failures = 0;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
  };
  const check = async () => {
    if (busy || stopped) return;
    busy = true;
    try {
      const free = await freeBytes(options.path);
      failures = 0;
      if (!stopped && free < options.reserveBytes) {
        stop();
        const mib = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MiB`;
        const why = `the filesystem of ${options.path} has ${mib(free)} free, under the reserve of ${mib(options.reserveBytes)}`;
        options.log.warn({ path: options.path, freeBytes: free, reserveBytes: options.reserveBytes }, 'free space under the reserve: breaking the snapshot');
        options.onLow(why, free);
      }
    } catch (error) {
      failures++;
      if (failures === 1 || failures % 50 === 0) options.log.warn({ path: options.path, err: errorMessage(error), failures }, 'statfs failed in the free-space watch; retrying');
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => void check(), intervalMs);
  timer.unref();
  void check();
  return stop;
}
