import { describe, expect, it } from 'vitest';
import { backgroundSnapshotMayLeaveRamProtected, spawnDenyKillsProcess } from '../../../src/qemu/qemu-version.js';

describe('version-dependent QEMU behaviour', () => {
  it('background-snapshot leaves RAM write-protected on failure before 8.1 (and when the version is unknown)', () => {
    expect(backgroundSnapshotMayLeaveRamProtected({ major: 7, minor: 2, micro: 22 })).toBe(true);
    expect(backgroundSnapshotMayLeaveRamProtected({ major: 8, minor: 0, micro: 5 })).toBe(true);
    expect(backgroundSnapshotMayLeaveRamProtected({ major: 8, minor: 1, micro: 0 })).toBe(false);
    expect(backgroundSnapshotMayLeaveRamProtected({ major: 10, minor: 0, micro: 13 })).toBe(false);
    expect(backgroundSnapshotMayLeaveRamProtected(undefined)).toBe(true);
  });

  it('spawn=deny kills the process before 9.0, answers EPERM from 9.0', () => {
    expect(spawnDenyKillsProcess({ major: 7, minor: 2, micro: 22 })).toBe(true);
    expect(spawnDenyKillsProcess({ major: 9, minor: 0, micro: 0 })).toBe(false);
  });
});
