import { defineSnapshotMatrix } from '../helpers/matrix-suite.js';
import { definePostcopySuite } from '../helpers/postcopy-suite.js';
import { patchedQemu } from '../helpers/qemu-builds.js';

/**
 * fork-postcopy on forksnap's QEMU 10.0 series (patches/qemu-10.0/0004: the forked snapshot process
 * is a postcopy source): the acceptance matrix (both disk backends), then the strategy's own tests
 * (test/helpers/postcopy-suite.ts).
 */
const patched = await patchedQemu('10.0');

defineSnapshotMatrix({ label: 'patched QEMU 10.0, fork-postcopy', qemuBinary: patched, strategies: ['fork-postcopy'], expectFork: true });
definePostcopySuite({ label: 'QEMU 10.0', qemuBinary: patched });
