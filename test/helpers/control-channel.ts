export { ControlChannel } from '../../src/demo/guest-control.js';
