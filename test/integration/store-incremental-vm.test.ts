import { statfs, truncate } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { resultOf, runCli } from '../helpers/forksnap-cli.js';
import { inspectExt4 } from '../helpers/image-inspect.js';
import { useSharedGuest } from '../helpers/shared-guest.js';

/**
 * Incremental storage (the default) through the real pipeline: three snapshots of a running test
 * guest (qcow2 data disk, stock QEMU, the fleecing backend), the guest changing a little in
 * between; the second and third are written as increments straight from the child's disk, never
 * as a full image first; the space the second takes on the state filesystem against the first;
 * delete of the middle and then the first, each followed by verify of the rest; revert from an
 * increment; `--full` stores a full image with its reason.
 */
const STOCK_QEMU = { FORKSNAP_QEMU: '/usr/bin/qemu-system-x86_64' };
const MiB = 1024 * 1024;

describe('incremental snapshots of a running VM', () => {
  const guest = useSharedGuest('incr', { diskFormat: 'qcow2', env: () => STOCK_QEMU });
  const free = async () => {
    const info = await statfs(guest.state);
    return info.bavail * info.bsize;
  };
  const guestRun = async (command: string) => {
    const reply = await guest.vm.control.request(`run ${command}`, (line) => line.startsWith('OK run') || line.startsWith('ERR'), 120_000);
    expect(reply).toMatch(/^OK run 0 /);
  };
  const snapshot = async (name: string, extra: string[] = []) => {
    const before = await free();
    const started = performance.now();
    const cli = await runCli(['snapshot', 'create', 'incr', '--json', '--name', name, ...extra], guest.state);
    const ms = Math.round(performance.now() - started);
    expect(cli.exitCode, cli.stderr).toBe(0);
    const meta = resultOf(cli);
    const written = cli.lines.filter((line) => line.type === 'phase-progress' && line.phase === 'materialise').map((line) => String(line.message ?? ''));
    return { meta, ms, used: before - (await free()), written: [...new Set(written)] };
  };
  const verify = async (id: string) => {
    const cli = await runCli(['snapshot', 'verify', id, '--json'], guest.state);
    expect(cli.exitCode, cli.stdout).toBe(0);
    return JSON.parse(cli.stdout) as { verdict: string; checks: { check: string; status: string; filesystem?: string }[] };
  };

  it('stores the second and third snapshot as small increments, each whole; deletes merge; revert flattens', async () => {
    await guestRun('dd if=/dev/urandom of=/data/blob bs=1M count=16 && sync');
    const first = await snapshot('incr-1');
    await guestRun('dd if=/dev/urandom of=/data/change-2 bs=64k count=4');
    const second = await snapshot('incr-2');
    await guestRun('dd if=/dev/urandom of=/data/change-3 bs=64k count=4');
    const third = await snapshot('incr-3');
    const list = JSON.parse((await runCli(['snapshot', 'list', 'incr', '--json'], guest.state)).stdout) as { id: string; sizeOnDiskBytes: number; disks: { image: { backing?: { snapshot: string } } }[] }[];
    const own = Object.fromEntries(list.map((entry) => [entry.id, entry.sizeOnDiskBytes]));
    console.log(`snapshot 1: ${(first.used / MiB).toFixed(1)} MiB of free space, own size ${(own['incr-1']! / MiB).toFixed(2)} MiB, ${first.ms} ms; `
      + `snapshot 2: ${(second.used / MiB).toFixed(1)} MiB, own ${(own['incr-2']! / MiB).toFixed(2)} MiB, ${second.ms} ms; snapshot 3: own ${(own['incr-3']! / MiB).toFixed(2)} MiB, ${third.ms} ms`);
    expect(first.meta.disks[0].image.backing).toBeUndefined();
    expect(first.meta.disks[0].fullReason).toBe('no previous snapshot of this VM');
    expect(first.written.filter((what) => what !== '')).toEqual(['data: writing the full image']);
    expect(second.meta.disks[0].image.backing).toEqual({ snapshot: 'incr-1', file: 'data.qcow2', format: 'qcow2' });
    expect(second.meta.disks[0].fullReason).toBeUndefined();
    expect(second.written.filter((what) => what !== '')).toEqual(['data: writing the increment over incr-1']);
    expect(third.meta.disks[0].image.backing).toMatchObject({ snapshot: 'incr-2' });
    expect(own['incr-1']).toBeGreaterThan(16 * MiB);
    // ~256 KiB written by the guest plus the child's shutdown writes (journal, superblock) and qcow2 metadata.
    expect(own['incr-2']).toBeLessThan(own['incr-1']! / 8);
    expect(own['incr-3']).toBeLessThan(own['incr-1']! / 8);
    // Free space on the state filesystem (other writers on the host add noise): the second took far less than the first.
    expect(second.used).toBeLessThan(first.used / 2);

    // The absolute path in the JSON opens directly, backing chain and all; the snapshot is clean ext4 with its data.
    const facts = await inspectExt4(third.meta.disks[0].image.path, 'qcow2');
    expect(facts.needsRecovery).toBe(false);
    expect(facts.cleanShutdown).toBeDefined();
    for (const id of ['incr-1', 'incr-2', 'incr-3']) expect((await verify(id)).verdict).toBe('passed');

    // Delete the middle, then the first: the last stays whole each time.
    const contentOf3 = path.join(guest.root, 'incr-3.raw');
    await execa('qemu-img', ['convert', '-O', 'raw', third.meta.disks[0].image.path, contentOf3]);
    expect((await runCli(['snapshot', 'delete', 'incr-2'], guest.state)).exitCode).toBe(0);
    expect((await verify('incr-1')).verdict).toBe('passed');
    expect((await verify('incr-3')).verdict).toBe('passed');
    expect((await execa('qemu-img', ['compare', '-F', 'raw', third.meta.disks[0].image.path, contentOf3], { reject: false })).exitCode).toBe(0);
    expect((await runCli(['snapshot', 'delete', 'incr-1'], guest.state)).exitCode).toBe(0);
    const shown = JSON.parse((await runCli(['snapshot', 'show', 'incr-3', '--json'], guest.state)).stdout) as { disks: { image: { backing?: unknown } }[] };
    expect(shown.disks[0]!.image.backing).toBeUndefined();
    const finalCheck = await verify('incr-3');
    expect(finalCheck.checks.find((check) => check.check === 'filesystem')).toMatchObject({ filesystem: 'ext4', status: 'passed' });
    expect((await execa('qemu-img', ['compare', '-F', 'raw', third.meta.disks[0].image.path, contentOf3], { reject: false })).exitCode).toBe(0);

    // A fourth snapshot chains onto the third; revert from it flattens into the VM's own qcow2.
    await guestRun('dd if=/dev/urandom of=/data/change-4 bs=64k count=4');
    const fourth = await snapshot('incr-4');
    expect(fourth.meta.disks[0].image.backing).toMatchObject({ snapshot: 'incr-3' });
    // --full: a full image with the reason; the next snapshot chains onto it.
    const forced = await snapshot('incr-full', ['--full']);
    expect(forced.meta.disks[0].image.backing).toBeUndefined();
    expect(forced.meta.disks[0].fullReason).toBe('a full snapshot was asked for (--full)');
    const next = await snapshot('incr-next');
    expect(next.meta.disks[0].image.backing).toMatchObject({ snapshot: 'incr-full' });
    expect((await verify('incr-next')).verdict).toBe('passed');
    // A base that cannot be read (its image truncated): the next snapshot is stored full, with why.
    await truncate(next.meta.disks[0].image.path, 0);
    const fallback = await snapshot('incr-fallback');
    expect(fallback.meta.disks[0].image.backing).toBeUndefined();
    expect(fallback.meta.disks[0].fullReason).toMatch(/^writing it as an increment over incr-next failed: /);
    expect((await verify('incr-fallback')).verdict).toBe('passed');
    const revert = await runCli(['snapshot', 'revert', 'incr-4', '--restart'], guest.state);
    expect(revert.exitCode, revert.stderr).toBe(0);
    const info = JSON.parse((await execa('qemu-img', ['info', '-U', '--output=json', guest.vm.disk])).stdout) as { format: string; 'backing-filename'?: string };
    expect(info.format).toBe('qcow2');
    expect(info['backing-filename']).toBeUndefined();
  });
});
