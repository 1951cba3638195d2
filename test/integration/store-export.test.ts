import { cp, readFile, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Paths } from '../../src/config.js';
import { runCli, startCli } from '../helpers/forksnap-cli.js';
import { storeSnapshot, storeTestRoot } from '../helpers/store-fixture.js';

/**
 * `forksnap snapshot export` on a real store: a self-contained copy with qemu-img convert (qcow2
 * and raw), and the disk served read-only over NBD on a UNIX socket by qemu-nbd, read back with
 * `qemu-img compare` against the stored image.
 */
let root = '';
let state = '';
let paths: Paths;
let stored = '';

beforeAll(async () => {
  const made = await storeTestRoot('store-export', 4096);
  ({ root, state, paths } = made);
  const work = made.work;
  await storeSnapshot(paths, { id: 's1', vm: 'v', createdAt: '2026-12-01T00:00:00Z', disks: [{ id: 'data', file: path.join(work, 'data.qcow2'), format: 'qcow2' }] });
  stored = path.join(state, 'snapshots', 's1', 'data.qcow2');
  // s2: the same disk with a new 192 KiB file and an overwritten 4 KiB at 20 MiB (raw, like a raw VM disk).
  await cp(path.join(work, 'data.raw'), path.join(work, 'data2.raw'));
  await execa('dd', ['if=/dev/urandom', `of=${path.join(work, 'new.bin')}`, 'bs=1K', 'count=192', 'status=none']);
  await execa('debugfs', ['-w', '-R', `write ${path.join(work, 'new.bin')} new`, path.join(work, 'data2.raw')]);
  await execa('dd', ['if=/dev/urandom', `of=${path.join(work, 'data2.raw')}`, 'bs=4K', 'count=1', `seek=${(20 * 1024) / 4}`, 'conv=notrunc', 'status=none']);
  await storeSnapshot(paths, { id: 's2', vm: 'v', createdAt: '2026-12-01T00:00:01Z', disks: [{ id: 'data', file: path.join(work, 'data2.raw'), format: 'raw' }] });
  contents = [path.join(work, 'data.raw'), path.join(work, 'data2.raw')];
}, 60_000);

let contents: string[] = [];

/** The 64 KiB blocks in which two raw files differ, as [start, end) byte ranges, merged. */
async function differingRanges(a: string, b: string, block = 65536): Promise<[number, number][]> {
  const [left, right] = [await readFile(a), await readFile(b)];
  const ranges: [number, number][] = [];
  for (let offset = 0; offset < left.length; offset += block) {
    if (left.subarray(offset, offset + block).equals(right.subarray(offset, offset + block))) continue;
    const last = ranges.at(-1);
    if (last && last[1] === offset) last[1] = offset + block;
    else ranges.push([offset, offset + block]);
  }
  return ranges;
}

async function waitForServing(server: ReturnType<typeof startCli>): Promise<Record<string, any>> {
  let output = '';
  server.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const deadline = Date.now() + 30_000;
  while (!output.includes('"serving"') && Date.now() < deadline && server.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 50));
  return (JSON.parse(output.split('\n')[0]!) as { serving: Record<string, any> }).serving;
}

afterAll(async () => {
  const left = await execa('pgrep', ['-f', `qemu-nbd.*${root}`], { reject: false });
  expect(left.stdout.trim(), 'qemu-nbd left running').toBe('');
  if (root) await rm(root, { recursive: true, force: true });
});

describe('snapshot export --to', () => {
  it('writes a self-contained qcow2 (default: the stored format) and a raw copy, both identical to the stored image', async () => {
    const qcow2 = path.join(root, 'out.qcow2');
    const cli = await runCli(['snapshot', 'export', 's1', '--disk', 'data', '--to', qcow2, '--json'], state);
    expect(cli.exitCode, cli.stderr).toBe(0);
    expect(JSON.parse(cli.stdout)).toMatchObject({ snapshot: 's1', disk: 'data', file: qcow2, format: 'qcow2', virtualSize: 64 * 1024 * 1024 });
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', qcow2])).stdout) as { format: string; 'backing-filename'?: string };
    expect(info.format).toBe('qcow2');
    expect(info['backing-filename']).toBeUndefined();
    expect((await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', stored, qcow2], { reject: false })).exitCode).toBe(0);

    const raw = path.join(root, 'out.raw');
    const rawCli = await runCli(['snapshot', 'export', 's1', '--disk', 'data', '--to', raw, '--format', 'raw'], state);
    expect(rawCli.exitCode, rawCli.stderr).toBe(0);
    expect((await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', stored, raw], { reject: false })).exitCode).toBe(0);
    expect((await execa('e2fsck', ['-fn', raw], { reject: false })).exitCode).toBe(0);
  });

  it('refuses an existing target, an unknown disk and a bad format, writing nothing', async () => {
    const existing = path.join(root, 'out.qcow2');
    const before = (await stat(existing)).mtimeMs;
    expect((await runCli(['snapshot', 'export', 's1', '--disk', 'data', '--to', existing], state)).exitCode).toBe(2);
    expect((await stat(existing)).mtimeMs).toBe(before);
    expect((await runCli(['snapshot', 'export', 's1', '--disk', 'nope', '--to', path.join(root, 'x.qcow2')], state)).exitCode).toBe(4);
    expect((await runCli(['snapshot', 'export', 's1', '--disk', 'data', '--to', path.join(root, 'y.img'), '--format', 'vmdk'], state)).exitCode).toBe(2);
    expect((await runCli(['snapshot', 'export', 's1', '--disk', 'data'], state)).exitCode).toBe(2);
    await expect(stat(path.join(root, 'x.qcow2'))).rejects.toThrow();
    await expect(stat(path.join(root, 'y.img'))).rejects.toThrow();
  });
});

describe('snapshot export --nbd', () => {
  it('serves the disk read-only under its disk name until SIGTERM; qemu-img compare reads it back identical', async () => {
    const socket = path.join(root, 'nbd.sock');
    const server = startCli(['snapshot', 'export', 's1', '--disk', 'data', '--nbd', socket, '--json'], state);
    let output = '';
    server.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const deadline = Date.now() + 30_000;
    while (!output.includes('"serving"') && Date.now() < deadline && server.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 50));
    const serving = (JSON.parse(output.split('\n')[0]!) as { serving: { uri: string; exportName: string; socket: string } }).serving;
    expect(serving).toMatchObject({ exportName: 'data', socket, uri: `nbd+unix:///data?socket=${socket}` });

    const started = performance.now();
    const compare = await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', stored, serving.uri], { reject: false, all: true });
    console.log(`qemu-img compare over NBD: ${Math.round(performance.now() - started)} ms`);
    expect(compare.exitCode, compare.all).toBe(0);
    // Two clients at once, and the export is read-only: a write is refused.
    const [info, write] = await Promise.all([
      execa('qemu-img', ['info', '--output=json', '-f', 'raw', serving.uri], { reject: false }),
      execa('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 4k', serving.uri], { reject: false, all: true }),
    ]);
    expect(JSON.parse(info.stdout)['virtual-size']).toBe(64 * 1024 * 1024);
    expect(write.all).toMatch(/read-only|Permission denied|Operation not permitted|EPERM|Block node is read-only/i);
    expect((await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', stored, serving.uri], { reject: false })).exitCode).toBe(0);
    // The wrong export name is not served.
    expect((await execa('qemu-img', ['info', `nbd+unix:///other?socket=${socket}`], { reject: false })).exitCode).not.toBe(0);

    server.kill('SIGTERM');
    const ended = await server;
    expect(ended.exitCode, String(ended.stderr)).toBe(0);
    await expect(stat(socket)).rejects.toThrow();
  });

  it('with --since exposes exactly the blocks that differ from the older snapshot as qemu:dirty-bitmap:ID2', async () => {
    const socket = path.join(root, 'since.sock');
    const server = startCli(['snapshot', 'export', 's2', '--disk', 'data', '--nbd', socket, '--since', 's1', '--json'], state);
    const serving = await waitForServing(server);
    expect(serving).toMatchObject({ exportName: 'data', since: 's1', metaContext: 'qemu:dirty-bitmap:s1' });
    // The content served is snapshot s2's.
    expect((await execa('qemu-img', ['compare', '-F', 'raw', contents[1]!, serving.uri], { reject: false })).exitCode).toBe(0);
    // qemu's NBD client maps a dirty-bitmap context onto block status: dirty = "data": false.
    const map = await execa('qemu-img', ['map', '--output=json', '--image-opts', `driver=nbd,server.type=unix,server.path=${socket},export=data,x-dirty-bitmap=qemu:dirty-bitmap:s1`]);
    const dirty = (JSON.parse(map.stdout) as { start: number; length: number; data: boolean }[]).filter((entry) => !entry.data).map((entry): [number, number] => [entry.start, entry.start + entry.length]);
    const expected = await differingRanges(contents[0]!, contents[1]!);
    console.log(`changed since s1: ${JSON.stringify(dirty)} (${serving.changedBytes} bytes in the overlay)`);
    expect(expected.length).toBeGreaterThanOrEqual(2);
    expect(dirty).toEqual(expected);
    server.kill('SIGTERM');
    expect((await server).exitCode).toBe(0);
    // The temporary bitmap overlay is gone with the server.
    expect(await readdir(path.join(state, 'work')).catch(() => [])).toEqual([]);
  });

  it('refuses --since a later snapshot or with --to', async () => {
    expect((await runCli(['snapshot', 'export', 's1', '--disk', 'data', '--nbd', path.join(root, 'x.sock'), '--since', 's2'], state)).exitCode).toBe(2);
    expect((await runCli(['snapshot', 'export', 's2', '--disk', 'data', '--to', path.join(root, 'z.qcow2'), '--since', 's1'], state)).exitCode).toBe(2);
    await expect(stat(path.join(root, 'x.sock'))).rejects.toThrow();
  });
});
