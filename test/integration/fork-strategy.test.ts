import { defineForkSuite } from '../helpers/fork-suite.js';
import { defineSnapshotMatrix } from '../helpers/matrix-suite.js';
import { patchedQemu } from '../helpers/qemu-builds.js';

/**
 * The fork strategy on the patched QEMU 7.2 (patches/qemu-7.2/, scripts/build-qemu.sh 7.2): the full
 * acceptance set, plus what only fork has (test/helpers/fork-suite.ts). The same on 10.0:
 * fork-strategy-10.0.test.ts.
 */
const patched = await patchedQemu('7.2');

defineSnapshotMatrix({ label: 'patched QEMU 7.2 (fork)', qemuBinary: patched, strategies: ['fork'], expectFork: true });
defineForkSuite({ label: 'QEMU 7.2', qemuBinary: patched });
