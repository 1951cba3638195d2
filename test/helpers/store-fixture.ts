import { copyFile, mkdir, mkdtemp } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Paths } from '../../src/config.js';
import { beginSnapshot, describeImage, type SnapshotMeta } from '../../src/snapshot/store.js';

/**
 * A snapshot written into a store the way the job's materialise + commit write it (beginSnapshot,
 * describeImage, commit), from real image files: for store-level tests (verify, export,
 * incremental, delete) that need no VM.
 */
export async function storeSnapshot(paths: Paths, options: { id: string; vm: string; createdAt: string; disks: { id: string; file: string; format: 'raw' | 'qcow2' }[]; consistency?: 'clean' | 'crash-consistent' }): Promise<SnapshotMeta> {
  const target = await beginSnapshot(paths, options.id);
  const disks: SnapshotMeta['disks'] = [];
  for (const disk of options.disks) {
    const dest = path.join(target.dir, `${disk.id}.${disk.format}`);
    await copyFile(disk.file, dest);
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', '-f', disk.format, dest])).stdout) as { 'virtual-size': number };
    disks.push({ id: disk.id, source: disk.file, sourceFormat: disk.format, virtualSize: info['virtual-size'], backend: 'fleecing', image: await describeImage(dest, disk.format) });
  }
  const meta: SnapshotMeta = {
    version: 1, id: options.id, vm: options.vm, createdAt: options.createdAt, strategy: 'fork',
    consistency: options.consistency ?? 'clean', consistencyReason: 'test fixture', parentDowntimeMs: 1, timeToStateMs: 1, timeToImageMs: 1,
    phasesMs: {}, disks, labels: {}, qemu: { binary: 'qemu-system-x86_64', version: '7.2.22' }, job: `job-${options.id}`,
  };
  await target.commit(meta);
  return meta;
}

/** A raw image of `mib` MiB holding a fresh, cleanly unmounted ext4 with `files` of random data. */
export async function ext4Image(file: string, mib: number, files: { name: string; kib: number }[] = []): Promise<void> {
  await execa('truncate', ['-s', `${mib}M`, file]);
  await execa('mkfs.ext4', ['-q', '-F', '-L', 'data', file]);
  for (const entry of files) {
    const data = `${file}.${entry.name}.tmp`;
    await execa('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1K', `count=${entry.kib}`, 'status=none']);
    await execa('debugfs', ['-w', '-R', `write ${data} ${entry.name}`, file]);
    await execa('rm', ['-f', data]);
  }
}

/**
 * A fresh store for a store-level test file: <root>/state (the state dir) and <root>/work (where
 * the test makes its source images), plus a clean ext4 data disk as raw and as qcow2.
 */
export async function storeTestRoot(name: string, dataKib: number): Promise<{ root: string; state: string; paths: Paths; work: string; dataRaw: string; dataQcow2: string }> {
  const root = await mkdtemp(`/var/tmp/forksnap-${name}-`);
  const state = path.join(root, 'state');
  const work = path.join(root, 'work');
  await mkdir(work, { recursive: true });
  const dataRaw = path.join(work, 'data.raw');
  const dataQcow2 = path.join(work, 'data.qcow2');
  await ext4Image(dataRaw, 64, [{ name: 'blob', kib: dataKib }]);
  await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', dataRaw, dataQcow2]);
  return { root, state, paths: { stateDir: state, cacheDir: path.join(root, 'cache') }, work, dataRaw, dataQcow2 };
}
