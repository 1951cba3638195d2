import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { runCli, resultOf } from './forksnap-cli.js';
import { inspectExt4, maxTick } from './image-inspect.js';
import { expectNothingLeft } from './leftovers.js';
import { useSharedGuest } from './shared-guest.js';
import { vmDiskFiles, vmStatus } from './qmp.js';
import { ensureXfsMount } from './xfs.js';

/**
 * The acceptance set of the end-to-end issue, for one QEMU binary: for each capture strategy ×
 * disk backend, a snapshot of one running guest under a write workload. The guest lives on XFS
 * with reflink, so both backends apply (the overlay backend is forced with --disk-backend).
 */
export interface MatrixOptions {
  readonly label: string;
  readonly qemuBinary: string;
  readonly strategies: readonly string[];
  readonly expectFork: boolean;
}

/** fleecing is the copy-before-write view that replaced the qcow2 overlay backend. */
const BACKENDS = ['reflink', 'fleecing'] as const;

const sha256 = async (file: string) => createHash('sha256').update(await readFile(file)).digest('hex');

export function defineSnapshotMatrix(options: MatrixOptions): void {
describe(`snapshot create: strategy × disk backend on ${options.label}`, () => {
  const guest = useSharedGuest('matrix', { diskFormat: 'raw', parentDir: ensureXfsMount, env: () => ({ FORKSNAP_QEMU: options.qemuBinary }) });
  const snapshotTicks: number[] = [];

  it(`${options.label} offers ${options.strategies.join(' and ')}${options.expectFork ? '' : ' but not fork'}`, async () => {
    const cli = await runCli(['strategies', 'matrix', '--json'], guest.state);
    expect(cli.exitCode, cli.stderr).toBe(0);
    const result = JSON.parse(cli.stdout) as { supported: string[]; reasons: Record<string, string> };
    expect(result.supported).toEqual(expect.arrayContaining([...options.strategies]));
    if (options.expectFork) expect(result.supported[0]).toBe('fork');
    else {
      expect(result.supported).not.toContain('fork');
      expect(result.reasons.fork).toMatch(/x-fork-snapshot/);
    }
  });

  for (const strategy of options.strategies) {
    for (const backend of BACKENDS) {
      if (strategy === 'precopy' && backend === 'fleecing') {
        // QEMU inactivates every block node when a migration completes; the copy-before-write
        // filter holds its target writable, so the two cannot be combined: refused up front.
        it('precopy + fleecing: refused before anything is changed, the parent runs on', async () => {
          const cli = await runCli(['snapshot', 'create', 'matrix', '--json', '--name', 'm-precopy-fleecing', '--strategy', 'precopy', '--disk-backend', 'fleecing'], guest.state);
          expect(cli.exitCode, cli.stderr).toBe(3);
          expect(cli.stderr).toMatch(/DISK_BACKEND_UNSUPPORTED/);
          expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
          expect(await vmDiskFiles(guest.qmpSocket)).toEqual([guest.vm.disk]);
          await expectNothingLeft(guest.state, guest.vm.dir);
        });
        continue;
      }
      it(`${strategy} + ${backend}: clean image of the halt instant, parent runs on`, async () => {
        const tickBefore = guest.vm.control.lastTick;
        const id = `m-${strategy}-${backend}`;
        const cli = await runCli(['snapshot', 'create', 'matrix', '--json', '--name', id, '--strategy', strategy, '--disk-backend', backend, '--keep-crash-image', '--label', 'test=matrix'], guest.state);
        expect(cli.exitCode, cli.stderr).toBe(0);
        const meta = resultOf(cli);

        // Labels and metadata.
        expect(meta).toMatchObject({ id, vm: 'matrix', strategy, consistency: 'clean', labels: { test: 'matrix' } });
        expect(meta.disks).toHaveLength(1);
        expect(meta.disks[0]).toMatchObject({ id: 'data', backend, source: guest.vm.disk });
        expect(meta.parentDowntimeMs).toBeGreaterThan(0);
        expect(meta.parentDowntimeMs).toBeLessThan(5_000);
        for (const phase of ['preflight', 'prepare', 'halt', 'disk-snapshot', 'capture', 'isolate', 'shutdown', 'materialise', 'finish']) expect(meta.phasesMs[phase], phase).toBeGreaterThanOrEqual(0);

        // Events: typed, ordered, the parent resumed before the child's verdict.
        const types = cli.lines.map((line) => line.type);
        expect(types.indexOf('parent-resumed')).toBeGreaterThan(types.indexOf('job-started'));
        expect(types.indexOf('verdict')).toBeGreaterThan(types.indexOf('parent-resumed'));
        expect(types.at(-1)).toBe('result');
        const seqs = cli.lines.filter((line) => typeof line.seq === 'number').map((line) => line.seq as number);
        expect(seqs).toEqual([...seqs].sort((a, b) => a - b));

        // The parent kept running and runs on its own files.
        const tickAfter = await guest.vm.control.waitForTick(guest.vm.control.lastTick, 10_000);
        expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
        expect(await vmDiskFiles(guest.qmpSocket)).toEqual([guest.vm.disk]);

        // The snapshot: cleanly unmounted, shutdown marker, and the ticks that were only in the
        // guest's page cache at the halt; nothing the parent wrote after resuming.
        const dir = path.join(guest.state, 'snapshots', id);
        const image = path.join(dir, meta.disks[0].image.file);
        expect(meta.disks[0].image.sha256).toBe(await sha256(image));
        // The VM's first snapshot is a full raw image; later ones are qcow2 increments over it.
        expect(meta.disks[0].image.format).toBe(meta.disks[0].image.backing ? 'qcow2' : 'raw');
        const facts = await inspectExt4(image, meta.disks[0].image.format);
        expect(facts.needsRecovery, facts.features).toBe(false);
        expect(facts.cleanShutdown).toBeDefined();
        const snapshotMax = maxTick(facts);
        expect(snapshotMax).toBeGreaterThanOrEqual(tickBefore);
        expect(snapshotMax).toBeLessThan(tickAfter);
        snapshotTicks.push(snapshotMax);

        // The disk-only image of the same instant: needs journal recovery, page-cache data missing.
        const crash = await inspectExt4(path.join(dir, meta.disks[0].crashImage.file), meta.disks[0].crashImage.format);
        expect(crash.needsRecovery).toBe(true);
        expect(crash.cleanShutdown).toBeUndefined();
        expect(maxTick(crash)).toBeLessThan(tickBefore);

        await expectNothingLeft(guest.state, guest.vm.dir);
      });
    }
  }

  it('the child never writes the parent\'s files (checksums before and after, idle guest)', async () => {
    await guest.vm.control.command('stopload');
    await guest.vm.control.command('sync');
    const before = await sha256(guest.vm.disk);
    const images: Record<string, { path: string; format: 'raw' | 'qcow2' }> = {};
    for (const backend of BACKENDS) {
      const cli = await runCli(['snapshot', 'create', 'matrix', '--json', '--name', `idle-${backend}`, '--strategy', options.strategies[0]!, '--disk-backend', backend], guest.state);
      expect(cli.exitCode, cli.stderr).toBe(0);
      expect(resultOf(cli).consistency).toBe('clean');
      images[backend] = resultOf(cli).disks[0].image;
      expect(await sha256(guest.vm.disk), `parent image changed by a ${backend} snapshot`).toBe(before);
    }
    // While the snapshot images do differ: the child wrote its shutdown marker into them.
    const snap = await inspectExt4(images.reflink!.path, images.reflink!.format);
    expect(snap.cleanShutdown).toBeDefined();
  });

  it('lists, shows, refuses to revert a running VM, reverts a stopped one, deletes', async () => {
    const list = await runCli(['snapshot', 'list', 'matrix', '--json'], guest.state);
    expect(list.exitCode).toBe(0);
    const ids = (JSON.parse(list.stdout) as { id: string }[]).map((meta) => meta.id);
    const last = `m-${options.strategies.at(-1)}-reflink`;
    expect(ids).toEqual(expect.arrayContaining([last, 'idle-fleecing']));
    const human = await runCli(['snapshot', 'list'], guest.state);
    expect(human.stdout).toMatch(/^ID\s+VM\s+CREATED\s+CONSISTENCY/m);
    const show = await runCli(['snapshot', 'show', last], guest.state);
    expect(show.stdout).toMatch(/consistency:\s+clean/);

    const refused = await runCli(['snapshot', 'revert', last], guest.state);
    expect(refused.exitCode).toBe(3);
    expect(refused.stderr).toMatch(/VM_RUNNING/);

    // Stop the parent cleanly; its own disk holds everything it wrote after every halt.
    const stop = await runCli(['vm', 'stop', 'matrix', '--powerdown'], guest.state);
    expect(stop.exitCode, stop.stderr).toBe(0);
    const parent = await inspectExt4(guest.vm.disk, 'raw');
    expect(parent.needsRecovery).toBe(false);
    expect(maxTick(parent)).toBeGreaterThan(Math.max(...snapshotTicks));
    // A raw image has nothing for qemu-img check to check; the filesystem on it must be consistent.
    const fsck = await execa('e2fsck', ['-fn', guest.vm.disk], { reject: false });
    expect(fsck.exitCode, fsck.stdout + fsck.stderr).toBe(0);

    const revert = await runCli(['snapshot', 'revert', last, '--json'], guest.state);
    expect(revert.exitCode, revert.stderr).toBe(0);
    // The disk now holds the snapshot's content (an increment's whole chain, flattened to raw).
    const meta = JSON.parse((await runCli(['snapshot', 'show', last, '--json'], guest.state)).stdout) as { disks: { image: { path: string; format: string } }[] };
    const same = await execa('qemu-img', ['compare', '-f', 'raw', '-F', meta.disks[0]!.image.format, guest.vm.disk, meta.disks[0]!.image.path], { reject: false });
    expect(same.exitCode, same.stdout + same.stderr).toBe(0);

    const deleted = await runCli(['snapshot', 'delete', last], guest.state);
    expect(deleted.exitCode).toBe(0);
    const missing = await runCli(['snapshot', 'show', last], guest.state);
    expect(missing.exitCode).toBe(4);
    expect(missing.stderr).toMatch(/SNAPSHOT_NOT_FOUND/);
  });
});
}
