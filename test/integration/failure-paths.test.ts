import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { resultOf, runCli, startCli, toCliResult } from '../helpers/forksnap-cli.js';
import { inspectExt4, maxTick } from '../helpers/image-inspect.js';
import { expectNothingLeft } from '../helpers/leftovers.js';
import { expectEveryTickOnParentDisk } from '../helpers/parent-writes.js';
import { findChildQemu } from '../helpers/processes.js';
import { vmDiskFiles, vmStatus } from '../helpers/qmp.js';
import { ensureXfsMount } from '../helpers/xfs.js';
import { useSharedGuest } from '../helpers/shared-guest.js';

/**
 * What happens when things go wrong after the halt: the parent must run on, on its own files,
 * with nothing lost and nothing left behind. The parent disk is a qcow2 overlay (so qemu-img check
 * applies); the fleecing backend (copy-before-write view, nothing to merge back) is forced for
 * background-snapshot, precopy runs on reflink.
 */
const STOCK_QEMU = { FORKSNAP_QEMU: '/usr/bin/qemu-system-x86_64' };

async function waitForChild(state: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const pid = await findChildQemu(path.join(state, 'work'));
    if (pid) return pid;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('no child QEMU appeared');
}

describe('failure paths keep the parent running and leave nothing behind', () => {
  // On XFS with reflink: background-snapshot runs on the fleecing view (forced), precopy on reflink.
  const guest = useSharedGuest('fail', { diskFormat: 'qcow2', parentDir: ensureXfsMount, env: () => STOCK_QEMU });

  /** Start a capture and freeze its child once the state is streaming: the transfer is then surely mid-way. */
  async function captureWithFrozenChild(strategy: string): Promise<{ cli: ReturnType<typeof startCli>; child: number; output: () => string }> {
    let output = '';
    // precopy cannot use the fleecing view (QEMU inactivates all block nodes at its end): reflink.
    const cli = startCli(['snapshot', 'create', 'fail', '--json', '--strategy', strategy, '--disk-backend', strategy === 'precopy' ? 'reflink' : 'fleecing'], guest.state);
    cli.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const child = await waitForChild(guest.state, 30_000);
    const streaming = strategy === 'precopy' ? /"phase-start","phase":"capture"/ : /"parent-resumed"/;
    const deadline = Date.now() + 30_000;
    while (!streaming.test(output) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(output).toMatch(streaming);
    process.kill(child, 'SIGSTOP');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return { cli, child, output: () => output };
  }

  async function expectChildKillHandled(strategy: string): Promise<void> {
    const { cli, child } = await captureWithFrozenChild(strategy);
    process.kill(child, 'SIGKILL');
    const result = toCliResult(await cli);
    expect(result.exitCode, result.stderr).toBe(1);
    const failed = result.lines.find((line) => line.type === 'job-failed');
    expect(failed, result.stdout).toMatchObject({ code: 'CAPTURE_FAILED' });
    expect(String(failed?.message)).toMatch(/child QEMU|migration/);

    expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
    expect(await vmDiskFiles(guest.qmpSocket)).toEqual([guest.vm.disk]);
    const tick = guest.vm.control.lastTick;
    expect(await guest.vm.control.waitForTick(tick, 10_000)).toBeGreaterThan(tick);
    await expectNothingLeft(guest.state, guest.vm.dir);
  }

  it('background-snapshot: the child QEMU killed mid-transfer → CAPTURE_FAILED, parent unblocked and running, the fleecing view dropped', async () => {
    // Stock 7.2 leaves guest RAM write-protected after a broken channel: without forksnap releasing
    // it, the parent's vCPUs would hang in handle_userfault for good (the guest's ticks would stop).
    await expectChildKillHandled('background-snapshot');
  });

  it('after that failure, a precopy capture is refused with the reason instead of sending a corrupt stream', async () => {
    const cli = await runCli(['snapshot', 'create', 'fail', '--json', '--strategy', 'precopy'], guest.state);
    expect(cli.exitCode).toBe(3);
    expect(cli.lines.find((line) => line.type === 'job-failed')).toMatchObject({ code: 'STRATEGY_UNSUPPORTED' });
    expect(cli.stdout).toMatch(/write-tracking flag/);
    expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
  });

  it('SIGINT during the capture → CANCELLED (exit 130), parent running on its own files', async () => {
    const { cli, child } = await captureWithFrozenChild('background-snapshot');
    cli.kill('SIGINT');
    const result = toCliResult(await cli);
    expect(result.exitCode, result.stderr).toBe(130);
    // forksnap killed the (stopped) child itself.
    expect(() => process.kill(child, 0)).toThrow(/ESRCH/);
    expect(result.lines.find((line) => line.type === 'job-failed')).toMatchObject({ code: 'CANCELLED' });
    expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
    expect(await vmDiskFiles(guest.qmpSocket)).toEqual([guest.vm.disk]);
    const tick = guest.vm.control.lastTick;
    expect(await guest.vm.control.waitForTick(tick, 10_000)).toBeGreaterThan(tick);
    await expectNothingLeft(guest.state, guest.vm.dir);
  });

  it('auto picks background-snapshot, which resets QEMU\'s write-tracking guest.state; precopy works again', async () => {
    const healed = await runCli(['snapshot', 'create', 'fail', '--json', '--name', 'healed'], guest.state);
    expect(healed.exitCode, healed.stderr).toBe(0);
    expect(resultOf(healed)).toMatchObject({ strategy: 'background-snapshot', consistency: 'clean' });
    await expectChildKillHandled('precopy');
  });

  it('a snapshot after the failures is clean, and the parent lost nothing', async () => {
    const before = guest.vm.control.lastTick;
    const cli = await runCli(['snapshot', 'create', 'fail', '--json', '--name', 'after-failures'], guest.state);
    expect(cli.exitCode, cli.stderr).toBe(0);
    const meta = resultOf(cli);
    expect(meta.consistency).toBe('clean');
    const facts = await inspectExt4(path.join(guest.state, 'snapshots', 'after-failures', meta.disks[0].image.file), meta.disks[0].image.format);
    expect(facts.needsRecovery).toBe(false);
    expect(maxTick(facts)).toBeGreaterThanOrEqual(before);

    // Every tick the parent announced, across three failed and one good snapshot, is on its disk.
    await expectEveryTickOnParentDisk(guest);
  });
});

describe('a guest that ignores the power button', () => {
  const guest = useSharedGuest('deaf', { diskFormat: 'qcow2', append: 'fsnap.workload=1 fsnap.nobutton=1', env: () => STOCK_QEMU });

  it('is labelled crash-consistent, never clean; the parent is unaffected', async () => {
    const cli = await runCli(['snapshot', 'create', 'deaf', '--json', '--name', 'deaf-1', '--shutdown-timeout', '3'], guest.state);
    // 6: kept, but crash-consistent (README exit codes).
    expect(cli.exitCode, cli.stderr).toBe(6);
    const meta = resultOf(cli);
    expect(meta.consistency).toBe('crash-consistent');
    expect(meta.consistencyReason).toMatch(/did not power off/);
    const verdict = cli.lines.find((line) => line.type === 'verdict');
    expect(verdict).toMatchObject({ consistency: 'crash-consistent' });
    expect((await vmStatus(path.join(guest.state, 'vms', 'deaf', 'qmp.sock'))).status).toBe('running');
    const tick = guest.vm.control.lastTick;
    expect(await guest.vm.control.waitForTick(tick, 10_000)).toBeGreaterThan(tick);
    const facts = await inspectExt4(path.join(guest.state, 'snapshots', 'deaf-1', meta.disks[0].image.file), meta.disks[0].image.format);
    expect(facts.needsRecovery).toBe(true);
    expect(facts.cleanShutdown).toBeUndefined();
  });
});
