import { defineDbSuite } from '../helpers/db-suite.js';
import { patchedQemu } from '../helpers/qemu-builds.js';

/**
 * The DB proof (test/helpers/db-suite.ts) on Debian 13's QEMU 10.0 with forksnap's 10.0 series,
 * with the fork and fork-postcopy strategies (db-consistency.test.ts runs every strategy on 7.2).
 */
defineDbSuite({ label: 'QEMU 10.0', qemuBinary: await patchedQemu('10.0'), strategies: ['fork', 'fork-postcopy'] });
