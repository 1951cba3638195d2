import { defineDbSuite } from '../helpers/db-suite.js';
import { patchedQemu } from '../helpers/qemu-builds.js';

/**
 * Application consistency on a real DB server (test/helpers/db-suite.ts), with every capture
 * strategy, on the patched QEMU 7.2. The same with fork on 10.0: db-consistency-10.0.test.ts.
 */
defineDbSuite({ label: 'QEMU 7.2', qemuBinary: await patchedQemu('7.2'), strategies: ['fork', 'fork-postcopy', 'background-snapshot', 'precopy'] });
