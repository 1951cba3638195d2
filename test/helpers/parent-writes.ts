import { execa } from 'execa';
import { expect } from 'vitest';
import { runCli } from './forksnap-cli.js';
import { inspectExt4 } from './image-inspect.js';
import type { SharedGuest } from './shared-guest.js';

/**
 * Nothing the guest wrote is lost: stop the parent cleanly (power button), then its own qcow2 disk
 * checks clean, its ext4 needs no recovery, and every numbered tick the guest announced is on it.
 */
export async function expectEveryTickOnParentDisk(guest: SharedGuest): Promise<void> {
  const lastSeen = await guest.vm.control.waitForTick(guest.vm.control.lastTick);
  const stop = await runCli(['vm', 'stop', guest.vm.name, '--powerdown'], guest.state);
  expect(stop.exitCode, stop.stderr).toBe(0);
  const check = await execa('qemu-img', ['check', '-f', 'qcow2', guest.vm.disk], { reject: false });
  expect(check.exitCode, check.stdout).toBe(0);
  const disk = await inspectExt4(guest.vm.disk, 'qcow2');
  expect(disk.needsRecovery).toBe(false);
  const ticks = new Set(disk.ticks);
  expect(Array.from({ length: lastSeen }, (_, i) => i + 1).filter((n) => !ticks.has(n)), 'ticks missing on the parent disk').toEqual([]);
}
