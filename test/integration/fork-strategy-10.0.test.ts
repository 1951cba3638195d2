import { defineForkSuite } from '../helpers/fork-suite.js';
import { defineSnapshotMatrix } from '../helpers/matrix-suite.js';
import { patchedQemu } from '../helpers/qemu-builds.js';

/**
 * Debian 13's QEMU 10.0 with forksnap's 10.0 series (patches/qemu-10.0/, scripts/build-qemu.sh 10.0):
 * every strategy × disk backend (fork, and stock 10.0's own background-snapshot and precopy), then
 * the fork strategy's own tests (test/helpers/fork-suite.ts), as fork-strategy.test.ts does on 7.2.
 */
const patched = await patchedQemu('10.0');

defineSnapshotMatrix({ label: 'patched QEMU 10.0', qemuBinary: patched, strategies: ['fork', 'background-snapshot', 'precopy'], expectFork: true });
defineForkSuite({ label: 'QEMU 10.0', qemuBinary: patched });
