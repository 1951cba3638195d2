import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Paths } from '../../src/config.js';
import { runCli, startCli } from '../helpers/forksnap-cli.js';
import { ext4Image, storeSnapshot } from '../helpers/store-fixture.js';

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
  root = await mkdtemp('/var/tmp/forksnap-store-export-');
  state = path.join(root, 'state');
  paths = { stateDir: state, cacheDir: path.join(root, 'cache') };
  const work = path.join(root, 'work');
  await mkdir(work, { recursive: true });
  await ext4Image(path.join(work, 'data.raw'), 64, [{ name: 'blob', kib: 4096 }]);
  await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', path.join(work, 'data.raw'), path.join(work, 'data.qcow2')]);
  await storeSnapshot(paths, { id: 's1', vm: 'v', createdAt: '2026-12-01T00:00:00Z', disks: [{ id: 'data', file: path.join(work, 'data.qcow2'), format: 'qcow2' }] });
  stored = path.join(state, 'snapshots', 's1', 'data.qcow2');
}, 60_000);

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
});
