import path from 'node:path';

/**
 * Where forksnap keeps things. One place for every path convention.
 *   state dir  ($FORKSNAP_STATE_DIR, default /var/lib/forksnap): vms/<name>/, snapshots/<id>/, work/<job>/, locks/
 *   cache dir  ($FORKSNAP_CACHE_DIR, default /var/cache/forksnap): patched QEMU builds, test guests
 */
export interface Paths {
  readonly stateDir: string;
  readonly cacheDir: string;
}

export function resolvePaths(overrides: Partial<Paths> = {}): Paths {
  return {
    stateDir: path.resolve(overrides.stateDir ?? process.env.FORKSNAP_STATE_DIR ?? '/var/lib/forksnap'),
    cacheDir: path.resolve(overrides.cacheDir ?? process.env.FORKSNAP_CACHE_DIR ?? '/var/cache/forksnap'),
  };
}

export const vmDir = (paths: Paths, vm: string) => path.join(paths.stateDir, 'vms', vm);
export const snapshotsDir = (paths: Paths) => path.join(paths.stateDir, 'snapshots');
export const snapshotDir = (paths: Paths, id: string) => path.join(snapshotsDir(paths), id);
export const workRoot = (paths: Paths) => path.join(paths.stateDir, 'work');
export const locksDir = (paths: Paths) => path.join(paths.stateDir, 'locks');
export const qemuBuildsDir = (paths: Paths) => path.join(paths.cacheDir, 'qemu');
