import type { QemuVersion } from '../qmp/client.js';

/**
 * Behaviour that depends on the QEMU version, decided from the running QEMU's own answer (the QMP
 * greeting / query-version), never from which binary forksnap meant to start.
 */

/** True if `version` is at least major.minor. */
export function qemuAtLeast(version: QemuVersion, major: number, minor: number): boolean {
  return version.major > major || (version.major === major && version.minor >= minor);
}

/**
 * QEMU before 8.1 leaves guest RAM write-protected when a background snapshot's migration fails or
 * is cancelled (the migration thread stops serving userfaults; upstream 8.1 calls
 * ram_write_tracking_stop() on every exit path): the parent hangs until the protection is released
 * from outside (src/forker/release-write-protection.ts). An unknown version is assumed affected.
 */
export function backgroundSnapshotMayLeaveRamProtected(version: QemuVersion | undefined): boolean {
  return !version || !qemuAtLeast(version, 8, 1);
}

/**
 * QEMU 9.0 and later answer a denied spawn under `-sandbox spawn=deny` with EPERM; earlier ones
 * kill the process (SIGSYS) on the first fork(). forksnap's patch series makes both answer EPERM
 * and lets a plain fork() through (patches/qemu-<base>/0003-*), which only a patched QEMU has.
 */
export function spawnDenyKillsProcess(version: QemuVersion): boolean {
  return !qemuAtLeast(version, 9, 0);
}
