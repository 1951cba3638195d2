import path from 'node:path';
import { dir } from 'tmp-promise';
import type { Paths } from '../../src/config.js';

/** A fresh temporary directory with forksnap's state and cache directories inside, for unit tests. */
export interface TempPaths {
  readonly root: string;
  readonly paths: Paths;
  cleanup(): Promise<void>;
}

export async function tempPaths(): Promise<TempPaths> {
  const tmp = await dir({ unsafeCleanup: true });
  return {
    root: tmp.path,
    paths: { stateDir: path.join(tmp.path, 'state'), cacheDir: path.join(tmp.path, 'cache') },
    cleanup: () => tmp.cleanup(),
  };
}
