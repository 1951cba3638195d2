import { cp, mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Paths } from '../../src/config.js';
import { storeIncrementally } from '../../src/snapshot/incremental.js';
import { deleteSnapshot, listSnapshots, loadSnapshot } from '../../src/snapshot/store.js';
import { verifySnapshot } from '../../src/snapshot/verify.js';
import { runCli } from '../helpers/forksnap-cli.js';
import { ext4Image, storeSnapshot } from '../helpers/store-fixture.js';

/**
 * Incremental storage on a real store with real images (no VM: the store's own operations):
 * snapshot N+1 stored as a qcow2 over N's image holding only what differs; deleting the first,
 * a middle or the last snapshot leaves every other one whole (same content as before, verify
 * passes, its ext4 clean); a raw base; a moved store still opens.
 */
const KiB = 1024;
const MiB = 1024 * KiB;
const log = pino({ level: 'warn' });
let root = '';
let work = '';

/** Guest disk contents, as raw files: v1, then each next one a copy with one more small file. */
async function contents(prefix: string, count: number, changeKiB = 256): Promise<string[]> {
  const files = [path.join(work, `${prefix}-1.raw`)];
  await ext4Image(files[0]!, 64, [{ name: 'blob', kib: 8 * 1024 }]);
  for (let n = 2; n <= count; n++) {
    const file = path.join(work, `${prefix}-${n}.raw`);
    await cp(files.at(-1)!, file);
    const data = path.join(work, `${prefix}-${n}.change`);
    await execa('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1K', `count=${changeKiB}`, 'status=none']);
    await execa('debugfs', ['-w', '-R', `write ${data} change-${n}`, file]);
    files.push(file);
  }
  return files;
}

/** A chain of snapshots of VM `vm` in a fresh store, one per content, each stored incrementally. */
async function chain(name: string, sources: string[], format: 'raw' | 'qcow2'): Promise<{ paths: Paths; ids: string[] }> {
  const paths = { stateDir: path.join(root, name, 'state'), cacheDir: path.join(root, name, 'cache') };
  const ids: string[] = [];
  for (const [index, source] of sources.entries()) {
    let file = source;
    if (format === 'qcow2') {
      file = `${source}.${name}.qcow2`;
      await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', source, file]);
    }
    const id = `${name}-${index + 1}`;
    await storeSnapshot(paths, { id, vm: name, createdAt: `2026-12-01T00:00:0${index}Z`, disks: [{ id: 'data', file, format }] });
    const results = await storeIncrementally(paths, id, { signal: AbortSignal.timeout(120_000), log });
    expect(results[0]!.base).toBe(index === 0 ? undefined : `${name}-${index}`);
    ids.push(id);
  }
  return { paths, ids };
}

async function sameContent(image: string, raw: string): Promise<boolean> {
  return (await execa('qemu-img', ['compare', '-F', 'raw', image, raw], { reject: false })).exitCode === 0;
}

async function expectWhole(paths: Paths, id: string, source: string): Promise<void> {
  const view = await loadSnapshot(paths, id);
  const image = view.disks[0]!.image.path;
  expect(path.isAbsolute(image)).toBe(true);
  expect(await sameContent(image, source), `${id} holds what it was taken with`).toBe(true);
  const { verification } = await verifySnapshot(paths, id, { signal: AbortSignal.timeout(120_000), log });
  expect(verification.verdict, JSON.stringify(verification.checks.filter((check) => check.status === 'failed'))).toBe('passed');
  expect(verification.checks.find((check) => check.check === 'filesystem')).toMatchObject({ filesystem: 'ext4', status: 'passed' });
}

let sources: string[] = [];

beforeAll(async () => {
  root = await mkdtemp('/var/tmp/forksnap-store-incremental-');
  work = path.join(root, 'work');
  await mkdir(work, { recursive: true });
  sources = await contents('v', 3);
}, 120_000);

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe('incremental storage', () => {
  it('stores snapshot 2 and 3 as small qcow2 increments with relative backing paths; each opens whole', async () => {
    const started = performance.now();
    const { paths, ids } = await chain('a', sources, 'qcow2');
    const views = await listSnapshots(paths, 'a');
    const sizes = views.map((view) => view.sizeOnDiskBytes!);
    console.log(`3 snapshots stored (2 increments) in ${Math.round(performance.now() - started)} ms; own sizes on disk: ${sizes.map((size) => `${(size / MiB).toFixed(2)} MiB`).join(', ')}`);
    // The first holds the 8 MiB blob and the filesystem; the others ~256 KiB of change plus qcow2 metadata.
    expect(sizes[0]).toBeGreaterThan(8 * MiB);
    expect(sizes[1]).toBeLessThan(2 * MiB);
    expect(sizes[2]).toBeLessThan(2 * MiB);
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', views[2]!.disks[0]!.image.path])).stdout) as { 'backing-filename': string; format: string };
    expect(info).toMatchObject({ format: 'qcow2', 'backing-filename': '../a-2/data.qcow2' });
    expect(views[2]!.disks[0]!.image.backing).toEqual({ snapshot: 'a-2', file: 'data.qcow2', format: 'qcow2' });
    expect(views[2]!.disks[0]!.image.backingPath).toBe(path.join(paths.stateDir, 'snapshots', 'a-2', 'data.qcow2'));
    for (const [index, id] of ids.entries()) await expectWhole(paths, id, sources[index]!);
    // The CLI's list --json carries each snapshot's own size.
    const list = await runCli(['snapshot', 'list', 'a', '--json'], paths.stateDir);
    expect((JSON.parse(list.stdout) as { id: string; sizeOnDiskBytes: number }[]).map((entry) => [entry.id, entry.sizeOnDiskBytes])).toEqual(ids.map((id, index) => [id, sizes[index]]));
  });

  it('deleting the middle snapshot merges it into the next: the first and last stay whole', async () => {
    const { paths, ids } = await chain('mid', sources, 'qcow2');
    const cli = await runCli(['snapshot', 'delete', ids[1]!], paths.stateDir);
    expect(cli.exitCode, cli.stderr).toBe(0);
    expect((await listSnapshots(paths)).map((view) => view.id)).toEqual([ids[0], ids[2]]);
    const last = await loadSnapshot(paths, ids[2]!);
    expect(last.disks[0]!.image.backing).toEqual({ snapshot: ids[0], file: 'data.qcow2', format: 'qcow2' });
    expect(last.sizeOnDiskBytes).toBeLessThan(3 * MiB);
    await expectWhole(paths, ids[0]!, sources[0]!);
    await expectWhole(paths, ids[2]!, sources[2]!);
  });

  it('deleting the first snapshot makes its successor self-contained; deleting the last touches no other', async () => {
    const { paths, ids } = await chain('first', sources, 'qcow2');
    const secondBefore = await loadSnapshot(paths, ids[1]!);
    expect((await runCli(['snapshot', 'delete', ids[0]!], paths.stateDir)).exitCode).toBe(0);
    const second = await loadSnapshot(paths, ids[1]!);
    expect(second.disks[0]!.image.backing).toBeUndefined();
    expect(second.disks[0]!.image.sha256).not.toBe(secondBefore.disks[0]!.image.sha256);
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', second.disks[0]!.image.path])).stdout) as { 'backing-filename'?: string };
    expect(info['backing-filename']).toBeUndefined();
    await expectWhole(paths, ids[1]!, sources[1]!);
    await expectWhole(paths, ids[2]!, sources[2]!);

    const thirdBefore = await loadSnapshot(paths, ids[2]!);
    const secondSha = (await loadSnapshot(paths, ids[1]!)).disks[0]!.image.sha256;
    expect(thirdBefore.disks[0]!.image.backing?.snapshot).toBe(ids[1]);
    expect((await runCli(['snapshot', 'delete', ids[2]!], paths.stateDir)).exitCode).toBe(0);
    expect((await loadSnapshot(paths, ids[1]!)).disks[0]!.image.sha256).toBe(secondSha);
    await expectWhole(paths, ids[1]!, sources[1]!);
    expect((await listSnapshots(paths)).map((view) => view.id)).toEqual([ids[1]]);
  });

  it('a raw disk: increments are qcow2 over the raw image; deleting the raw base leaves the next one whole', async () => {
    const { paths, ids } = await chain('raw', sources.slice(0, 2), 'raw');
    const second = await loadSnapshot(paths, ids[1]!);
    expect(second.disks[0]!.image).toMatchObject({ file: 'data.qcow2', format: 'qcow2', backing: { snapshot: ids[0], file: 'data.raw', format: 'raw' } });
    expect(second.disks[0]!.sourceFormat).toBe('raw');
    await expectWhole(paths, ids[1]!, sources[1]!);
    expect((await runCli(['snapshot', 'delete', ids[0]!], paths.stateDir)).exitCode).toBe(0);
    await expectWhole(paths, ids[1]!, sources[1]!);
    // Exported back to the disk's own format, self-contained.
    const out = path.join(work, 'raw-export.raw');
    expect((await runCli(['snapshot', 'export', ids[1]!, '--disk', 'data', '--to', out, '--format', 'raw'], paths.stateDir)).exitCode).toBe(0);
    expect((await execa('cmp', [out, sources[1]!], { reject: false })).exitCode).toBe(0);
  });

  it('the store stays relocatable: a moved state directory still opens every increment', async () => {
    const { paths, ids } = await chain('move', sources, 'qcow2');
    const moved = path.join(root, 'moved-state');
    await rename(paths.stateDir, moved);
    const movedPaths = { ...paths, stateDir: moved };
    for (const [index, id] of ids.entries()) await expectWhole(movedPaths, id, sources[index]!);
    await expect(stat(path.join(moved, 'snapshots', ids[2]!, 'data.qcow2'))).resolves.toBeDefined();
  });

  it('with --full semantics (a snapshot stored full) nothing is chained, and a disk of another size starts a new chain', async () => {
    const paths = { stateDir: path.join(root, 'sized', 'state'), cacheDir: path.join(root, 'sized', 'cache') };
    await storeSnapshot(paths, { id: 'z1', vm: 'z', createdAt: '2026-12-01T00:00:00Z', disks: [{ id: 'data', file: sources[0]!, format: 'raw' }] });
    const forced = await storeIncrementally(paths, 'z1', { signal: AbortSignal.timeout(60_000), log, full: '--full was given' });
    expect(forced[0]).toMatchObject({ fullReason: '--full was given' });
    const bigger = path.join(work, 'bigger.raw');
    await ext4Image(bigger, 96);
    await storeSnapshot(paths, { id: 'z2', vm: 'z', createdAt: '2026-12-01T00:00:01Z', disks: [{ id: 'data', file: bigger, format: 'raw' }] });
    const results = await storeIncrementally(paths, 'z2', { signal: AbortSignal.timeout(60_000), log });
    expect(results[0]!.fullReason).toMatch(/disk size changed/);
    const z2 = await loadSnapshot(paths, 'z2');
    expect(z2.disks[0]!.image.backing).toBeUndefined();
    expect(z2.disks[0]!.fullReason).toMatch(/disk size changed/);
  });
});
