export { inspectExt4, maxTick, type Ext4Facts } from '../../src/demo/inspect-ext4.js';
