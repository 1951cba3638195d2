import { defineSnapshotMatrix } from '../helpers/matrix-suite.js';
import { definePostcopySuite } from '../helpers/postcopy-suite.js';
import { patchedQemu } from '../helpers/qemu-builds.js';

/**
 * fork-postcopy on forksnap's QEMU 7.2 series (patches/qemu-7.2/0004: the forked snapshot process
 * is a postcopy source): the acceptance matrix (both disk backends), then the strategy's own tests
 * (test/helpers/postcopy-suite.ts).
 */
const patched = await patchedQemu('7.2');

defineSnapshotMatrix({ label: 'patched QEMU 7.2, fork-postcopy', qemuBinary: patched, strategies: ['fork-postcopy'], expectFork: true });
definePostcopySuite({ label: 'QEMU 7.2', qemuBinary: patched });
