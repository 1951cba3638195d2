import { mkdtemp, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { failureDump } from './failure-dump.js';
import { runCli } from './forksnap-cli.js';
import { killLeftovers } from './processes.js';
import { startGuestVm, type GuestVm } from './test-guest.js';
import { keepRootOnFailure } from './test-root.js';

/**
 * One booted test guest shared by the tests of a describe block (booting costs ~15 s under TCG):
 * started through the real CLI in beforeAll once its workload ticks, stopped in afterAll, which
 * then proves that no QEMU of the block's directory is left (killed and waited for) and removes the
 * directory unless a test failed. When a test of
 * the block fails, the guest's console tail and the job journals are printed. The returned object
 * is filled in by beforeAll; read its fields inside tests and hooks only.
 */
export interface SharedGuest {
  root: string;
  state: string;
  vm: GuestVm;
  qmpSocket: string;
  /** The parent QEMU's pid. */
  pid: number;
}

export function useSharedGuest(
  name: string,
  options: {
    diskFormat: 'raw' | 'qcow2';
    /** Directory to create the block's root in (default /var/tmp). */
    parentDir?: () => Promise<string>;
    /** Environment of `vm start` (so of the QEMU), may depend on the root directory. */
    env?: (root: string) => Promise<Record<string, string>> | Record<string, string>;
    append?: string;
    /** Extra QEMU arguments of the VM spec (e.g. -sandbox). */
    extraArgs?: string[];
  },
): SharedGuest {
  const guest = {} as SharedGuest;
  const root = keepRootOnFailure();
  beforeAll(async () => {
    guest.root = await mkdtemp(path.join(options.parentDir ? await options.parentDir() : '/var/tmp', `forksnap-${name}-`));
    guest.state = path.join(guest.root, 'state');
    guest.vm = await startGuestVm({
      name,
      dir: path.join(guest.root, 'vm'),
      stateDir: guest.state,
      diskFormat: options.diskFormat,
      env: options.env ? await options.env(guest.root) : {},
      ...(options.append ? { append: options.append } : {}),
      ...(options.extraArgs ? { extraArgs: options.extraArgs } : {}),
    });
    guest.qmpSocket = path.join(guest.state, 'vms', name, 'qmp.sock');
    guest.pid = Number((await readFile(path.join(guest.state, 'vms', name, 'qemu.pid'), 'utf8')).trim());
    // The workload writes a tick every 100 ms into the guest's page cache only.
    await guest.vm.control.waitForTick(3);
  }, 300_000);

  afterEach(async (context) => {
    if (context.task.result?.state !== 'fail' || !guest.state) return;
    console.error(await failureDump({ title: `${name}: ${context.task.name}`, consoleLog: guest.vm?.consoleLog, stateDir: guest.state }));
  });

  afterAll(async () => {
    guest.vm?.control.close();
    if (guest.state) await runCli(['vm', 'stop', name], guest.state);
    const left = guest.root ? await killLeftovers(guest.root) : [];
    expect(left, 'QEMU processes left behind').toEqual([]);
    await root.remove(guest.root);
  });
  return guest;
}
