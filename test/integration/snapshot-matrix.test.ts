import { defineSnapshotMatrix } from '../helpers/matrix-suite.js';

/** The end-to-end acceptance set on stock Debian QEMU 7.2: background-snapshot and precopy. */
defineSnapshotMatrix({ label: 'stock QEMU', qemuBinary: '/usr/bin/qemu-system-x86_64', strategies: ['background-snapshot', 'precopy'], expectFork: false });
