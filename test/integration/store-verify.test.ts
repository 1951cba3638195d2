import { open, readdir, rm, truncate } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Paths } from '../../src/config.js';
import { runCli } from '../helpers/forksnap-cli.js';
import { ext4Image, storeSnapshot, storeTestRoot } from '../helpers/store-fixture.js';

/**
 * `forksnap snapshot verify` on real image files in a real store (no VM needed: the store is what
 * is checked): checksums, qemu-img check, and the guest filesystems read through
 * qemu-storage-daemon's read-only FUSE exports (a bare ext4 in a qcow2, an MBR disk with an ext4
 * and an XFS partition, a disk with no filesystem).
 */
const MiB = 1024 * 1024;
let root = '';
let paths: Paths;
let state = '';

async function partitionedImage(file: string, work: string): Promise<void> {
  // p1: ext4 at 1 MiB (32 MiB), p2: XFS at 34 MiB (320 MiB: mkfs.xfs's minimum is 300 MiB), MBR.
  const p1 = path.join(work, 'p1.raw');
  const p2 = path.join(work, 'p2.raw');
  await ext4Image(p1, 32, [{ name: 'one', kib: 512 }]);
  await execa('truncate', ['-s', '320M', p2]);
  await execa('mkfs.xfs', ['-q', '-f', p2]);
  await execa('truncate', ['-s', `${1 + 32 + 1 + 320 + 1}M`, file]);
  await execa('dd', [`if=${p1}`, `of=${file}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
  await execa('dd', [`if=${p2}`, `of=${file}`, 'bs=1M', 'seek=34', 'conv=notrunc,sparse', 'status=none']);
  const table = Buffer.alloc(66);
  const entry = (index: number, startMiB: number, sizeMiB: number, type: number) => {
    const at = index * 16;
    table[at + 4] = type;
    table.writeUInt32LE(startMiB * 2048, at + 8);
    table.writeUInt32LE(sizeMiB * 2048, at + 12);
  };
  entry(0, 1, 32, 0x83);
  entry(1, 34, 320, 0x83);
  table[64] = 0x55;
  table[65] = 0xaa;
  const handle = await open(file, 'r+');
  await handle.write(table, 0, 66, 446);
  await handle.close();
  await rm(p1);
  await rm(p2);
}

async function flipByte(file: string, offset: number): Promise<void> {
  const handle = await open(file, 'r+');
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, offset);
  byte[0] = byte[0]! ^ 0xff;
  await handle.write(byte, 0, 1, offset);
  await handle.close();
}

const verify = async (id: string) => {
  const cli = await runCli(['snapshot', 'verify', id, '--json'], state);
  return { cli, result: JSON.parse(cli.stdout || '{}') as { verdict: string; checks: { disk: string; check: string; target: string; status: string; detail: string; filesystem?: string }[] } };
};

beforeAll(async () => {
  const made = await storeTestRoot('store-verify', 8192);
  ({ root, state, paths } = made);
  const work = made.work;
  await partitionedImage(path.join(work, 'parts.raw'), work);
  await execa('dd', ['if=/dev/urandom', `of=${path.join(work, 'noise.raw')}`, 'bs=1M', 'count=4', 'status=none']);
  const disks = [
    { id: 'data', file: path.join(work, 'data.qcow2'), format: 'qcow2' as const },
    { id: 'parts', file: path.join(work, 'parts.raw'), format: 'raw' as const },
    { id: 'noise', file: path.join(work, 'noise.raw'), format: 'raw' as const },
  ];
  for (const id of ['good', 'flipped', 'truncated']) await storeSnapshot(paths, { id, vm: 'v', createdAt: '2026-12-01T00:00:00Z', disks });
  // A journal that needs recovery (what a crash-consistent image has), set with debugfs.
  const dirty = path.join(work, 'dirty.raw');
  await ext4Image(dirty, 64, [{ name: 'blob', kib: 64 }]);
  await execa('debugfs', ['-w', '-R', 'feature needs_recovery', dirty]);
  await storeSnapshot(paths, { id: 'dirty', vm: 'v', createdAt: '2026-12-01T00:00:01Z', disks: [{ id: 'data', file: dirty, format: 'raw' }] });
}, 120_000);

afterAll(async () => {
  // No FUSE export may be left mounted, no qemu-storage-daemon running.
  const mounts = await execa('grep', ['-c', 'forksnap-view-', '/proc/self/mountinfo'], { reject: false });
  expect(mounts.stdout.trim()).toBe('0');
  const daemons = await execa('pgrep', ['-f', 'qemu-storage-daemon.*forksnap-view-'], { reject: false });
  expect(daemons.stdout.trim()).toBe('');
  if (root) await rm(root, { recursive: true, force: true });
});

describe('snapshot verify', () => {
  it('passes a good snapshot: checksums, qemu-img check, ext4 (bare, in qcow2), ext4 and XFS partitions; records the verdict', async () => {
    const started = performance.now();
    const { cli, result } = await verify('good');
    expect(cli.exitCode, cli.stderr).toBe(0);
    expect(result.verdict).toBe('passed');
    const fs = result.checks.filter((check) => check.check === 'filesystem').map((check) => [check.disk, check.target, check.filesystem, check.status]);
    expect(fs).toEqual([
      ['data', 'whole disk', 'ext4', 'passed'],
      ['parts', 'partition 1', 'ext4', 'passed'],
      ['parts', 'partition 2', 'xfs', 'passed'],
      ['noise', 'whole disk', undefined, 'not-checked'],
    ]);
    expect(result.checks.filter((check) => check.check === 'sha256').every((check) => check.status === 'passed')).toBe(true);
    expect(result.checks.find((check) => check.check === 'qemu-img-check' && check.disk === 'data')?.status).toBe('passed');
    console.log(`verify of 3 disks took ${Math.round(performance.now() - started)} ms`);
    const show = await runCli(['snapshot', 'show', 'good', '--json'], state);
    expect(JSON.parse(show.stdout).verification).toMatchObject({ verdict: 'passed', at: expect.any(String) });
    const text = await runCli(['snapshot', 'show', 'good'], state);
    expect(text.stdout).toMatch(/verification: passed at /);
  });

  it('fails on a flipped byte (exit 8) and records it', async () => {
    const image = path.join(state, 'snapshots', 'flipped', 'data.qcow2');
    await flipByte(image, 3 * MiB + 12345);
    const { cli, result } = await verify('flipped');
    expect(cli.exitCode).toBe(8);
    expect(result.verdict).toBe('failed');
    expect(result.checks.find((check) => check.check === 'sha256' && check.disk === 'data')).toMatchObject({ status: 'failed', detail: expect.stringMatching(/differs from the recorded/) });
    // The other disks are still checked and pass.
    expect(result.checks.filter((check) => check.disk === 'parts').every((check) => check.status !== 'failed')).toBe(true);
    const show = await runCli(['snapshot', 'show', 'flipped', '--json'], state);
    expect(JSON.parse(show.stdout).verification.verdict).toBe('failed');
  });

  it('fails on a truncated image', async () => {
    const image = path.join(state, 'snapshots', 'truncated', 'data.qcow2');
    const { size } = await import('node:fs/promises').then((fs) => fs.stat(image));
    await truncate(image, Math.floor(size / 2));
    const { cli, result } = await verify('truncated');
    expect(cli.exitCode).toBe(8);
    expect(result.checks.find((check) => check.check === 'sha256' && check.disk === 'data')).toMatchObject({ status: 'failed', detail: expect.stringMatching(/truncated/) });
    expect(result.checks.find((check) => check.check === 'qemu-img-check' && check.disk === 'data')?.status).toBe('failed');
  });

  it('fails an ext4 whose journal needs recovery, though its checksums are right', async () => {
    const { cli, result } = await verify('dirty');
    expect(cli.exitCode).toBe(8);
    expect(result.checks.find((check) => check.check === 'sha256')?.status).toBe('passed');
    expect(result.checks.find((check) => check.check === 'filesystem')).toMatchObject({ status: 'failed', filesystem: 'ext4', detail: expect.stringMatching(/needs_recovery/) });
  });

  it('refuses an unknown snapshot with exit 4 and leaves no FUSE mount behind', async () => {
    const cli = await runCli(['snapshot', 'verify', 'nope'], state);
    expect(cli.exitCode).toBe(4);
    expect((await readdir('/tmp')).filter((name) => name.startsWith('forksnap-view-'))).toEqual([]);
  });
});
