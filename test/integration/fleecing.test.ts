import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isForksnapError } from '../../src/errors.js';
import { QmpClient } from '../../src/qmp/client.js';
import type { QmpEvent } from '../../src/qmp/events.js';
import { blockInfoList, statusInfo } from '../../src/qmp/schemas.js';
import type { DiskSnapshot } from '../../src/snapshot/disk-backend.js';
import { fleecingBackend } from '../../src/snapshot/fleecing-backend.js';
import { freeBytes } from '../../src/snapshot/space.js';
import type { ParentDisk } from '../../src/vm/inspect.js';
import { ControlChannel } from '../helpers/control-channel.js';
import { killLeftovers } from '../helpers/processes.js';
import { testGuest } from '../helpers/test-guest.js';

/**
 * The fleecing disk backend driven on its own against stock QEMU 7.2 and the test guest (one boot
 * for the file): the guest writes through its real virtio-blk devices, so a copy-before-write
 * failure that reached the guest's write would show as BLOCK_IO_ERROR / io-error.
 *
 * Disks: vda = the guest's ext4 data disk (qcow2 over the template), vdb = a raw scratch disk the
 * guest writes patterns to with O_DIRECT dd (no filesystem, so the bytes at each offset are known).
 */
const QEMU = '/usr/bin/qemu-system-x86_64';
const MiB = 1024 * 1024;
const ROOT = '/tmp/fs/c-it';

let dir = '';
let qemu: ChildProcess | undefined;
let qmp: QmpClient;
let control: ControlChannel;
let disks: { data: ParentDisk; scratch: ParentDisk };
const events: QmpEvent[] = [];
const log = pino({ level: 'info' }, pino.destination({ dest: `${ROOT}/test.log`, sync: true, mkdir: true }));

/** Guest: write `mib` MiB of byte `byte` (octal string) to /dev/vdb at `seekMiB`, O_DIRECT + fsync. */
async function guestWrite(byte: string, mib: number, seekMiB = 0): Promise<{ rc: number; seconds: number }> {
  const cmd = `dd if=/dev/zero bs=1M count=${mib} | tr '\\000' '\\${byte}' | dd of=/dev/vdb bs=1M seek=${seekMiB} iflag=fullblock oflag=direct conv=fsync,notrunc`;
  const reply = await control.request(`run ${cmd}`, (line) => line.startsWith('OK run') || line.startsWith('ERR'), 120_000);
  const [, , rc, cs] = reply.split(' ');
  return { rc: Number(rc), seconds: Number(cs) / 100 };
}

async function qemuIo(file: string, command: string, format = 'raw'): Promise<string> {
  const result = await execa('qemu-io', ['-U', '-r', '-f', format, '-c', command, file], { reject: false, all: true });
  return result.all ?? '';
}

async function mountSmallFs(mount: string, mib: number): Promise<void> {
  await mkdir(mount, { recursive: true });
  await execa('truncate', ['-s', `${mib}M`, `${mount}.img`]);
  await execa('mkfs.ext4', ['-q', '-F', `${mount}.img`]);
  await execa('mount', ['-o', 'loop', `${mount}.img`, mount]);
}

async function unmount(mount: string): Promise<void> {
  await execa('umount', [mount], { reject: false });
  await rm(`${mount}.img`, { force: true });
}

function parentDisk(id: string, device: string, file: string, format: string, virtualSize: number, blocks: Awaited<ReturnType<typeof queryBlock>>): ParentDisk {
  const block = blocks.find((entry) => entry.device === device)!;
  return { id, device, qdev: block.qdev, deviceId: undefined, nodeName: block.inserted!['node-name']!, file, format, virtualSize, backingFiles: [], declaredBy: 'drive' };
}

const queryBlock = () => qmp.execute('query-block', undefined, { schema: blockInfoList });
const status = async () => (await qmp.execute('query-status', undefined, { schema: statusInfo })).status;
const context = (workDir: string, jobId: string, reserveMiB: number) => ({ parent: qmp, workDir, jobId, log: log.child({ job: jobId }), spaceReserveBytes: reserveMiB * MiB });

/** The job's halt: stop, every disk's commitAtHalt, cont. Returns the downtime. */
async function freeze(snapshots: DiskSnapshot[]): Promise<number> {
  const started = performance.now();
  await qmp.execute('stop');
  try {
    for (const snapshot of snapshots) await snapshot.commitAtHalt(AbortSignal.timeout(10_000));
  } finally {
    await qmp.execute('cont');
  }
  return performance.now() - started;
}

async function expectViewGone(snapshots: DiskSnapshot[]): Promise<void> {
  const blocks = await queryBlock();
  for (const snapshot of snapshots) {
    const block = blocks.find((entry) => entry.device === snapshot.disk.device)!;
    expect(block.inserted?.['node-name']).toBe(snapshot.disk.nodeName);
    expect(block.inserted?.file).toBe(snapshot.disk.file);
  }
  const nodes = (await qmp.execute('query-named-block-nodes', { flat: true })) as { 'node-name': string }[];
  expect(nodes.map((node) => node['node-name']).filter((name) => name.startsWith('fs-'))).toEqual([]);
  expect(await qmp.execute('query-block-exports')).toEqual([]);
  // The server this job started is gone: a new one can start (and is stopped again).
  await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: path.join(dir, 'probe-nbd.sock') } } });
  await qmp.execute('nbd-server-stop');
}

/** Halt, guest overwrites, materialise, check bytes, finish: the happy path of one job. */
async function viewScenario(workDir: string, snapshots: DiskSnapshot[]): Promise<void> {
    // The child QEMU opens the exports before the halt, as the job's child does (-incoming: inactive).
    const child = spawn(QEMU, ['-nodefaults', '-display', 'none', '-machine', 'q35', '-accel', 'tcg', '-m', '256', '-S', '-incoming', 'defer',
      '-drive', `file=${snapshots[0]!.child.path},format=qcow2,if=none,id=drive0`, '-device', 'virtio-blk-pci,drive=drive0,id=vd0',
      '-drive', `file=${snapshots[1]!.child.path},format=qcow2,if=none,id=drive1`, '-device', 'virtio-blk-pci,drive=drive1,id=vd1'], { stdio: 'ignore' });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(child.exitCode).toBeNull();

    const downtimeMs = await freeze(snapshots);
    log.info({ downtimeMs }, 'halt with two disks');
    const after = await guestWrite('063', 16); // 0x33 over 0..16M, after the halt
    expect(after.rc).toBe(0);
    await qmp.hmp('qemu-io drive1 "write -P 0x44 32M 1M"');
    expect(await status()).toBe('running');
    // The parent never left its own files: the device's root is the filter, over the same file.
    for (const block of (await queryBlock()).filter((entry) => entry.device === 'drive0' || entry.device === 'drive1')) {
      expect(block.inserted?.file).toBe(block.device === 'drive0' ? disks.data.file : disks.scratch.file);
      expect(block.inserted?.['node-name']).toMatch(/^fs-flcbw-/);
    }
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));

    const dest = path.join(dir, 'store1');
    await mkdir(dest, { recursive: true });
    await snapshots[0]!.materialise(path.join(dest, 'data.qcow2'), AbortSignal.timeout(120_000), () => {});
    await snapshots[1]!.materialise(path.join(dest, 'scratch.raw'), AbortSignal.timeout(120_000), () => {});
    await snapshots[1]!.materialiseCrashImage!(path.join(dest, 'scratch.crash.raw'), AbortSignal.timeout(120_000), () => {});
    // The snapshot: the halt-time bytes; the parent's own file: the new ones.
    const image = path.join(dest, 'scratch.raw');
    expect(await qemuIo(image, 'read -P 0x22 0 8M')).toMatch(/read 8388608\/8388608/);
    expect(await qemuIo(image, 'read -P 0x11 8M 8M')).toMatch(/read 8388608\/8388608/);
    expect(await qemuIo(image, 'read -P 0x11 32M 1M')).toMatch(/read 1048576\/1048576/);
    expect(await qemuIo(path.join(dest, 'scratch.crash.raw'), 'read -P 0x22 0 8M')).toMatch(/read 8388608\/8388608/);
    expect(await qemuIo(disks.scratch.file, 'read -P 0x33 0 16M')).toMatch(/read 16777216\/16777216/);
    expect(await qemuIo(disks.scratch.file, 'read -P 0x44 32M 1M')).toMatch(/read 1048576\/1048576/);
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', path.join(dest, 'data.qcow2')])).stdout) as { 'backing-filename'?: string; format: string };
    expect(info.format).toBe('qcow2');
    expect(info['backing-filename']).toBeUndefined();
    expect((await execa('qemu-img', ['check', path.join(dest, 'data.qcow2')], { reject: false })).exitCode).toBe(0);

    for (const snapshot of snapshots) await snapshot.finish(AbortSignal.timeout(60_000), () => {});
    for (const snapshot of snapshots) await snapshot.discard(); // idempotent
    await expectViewGone(snapshots);
    expect(await readdir(path.join(workDir, 'fleecing'))).toEqual([]);
    expect(events.filter((event) => event.event === 'BLOCK_IO_ERROR')).toEqual([]);
    expect(await status()).toBe('running');
}

beforeAll(async () => {
  const guest = await testGuest();
  await mkdir(ROOT, { recursive: true });
  dir = path.join(ROOT, Math.random().toString(36).slice(2, 8));
  await mkdir(dir, { recursive: true });
  const data = path.join(dir, 'data.qcow2');
  const scratch = path.join(dir, 'scratch.raw');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.dataDisk, '-F', 'raw', data]);
  await execa('qemu-img', ['create', '-q', '-f', 'raw', scratch, '64M']);
  await execa('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64M', scratch]);
  const qmpSocket = path.join(dir, 'qmp.sock');
  const ctl = path.join(dir, 'ctl.sock');
  qemu = spawn(QEMU, [
    '-nodefaults', '-display', 'none', '-machine', 'q35', '-accel', 'tcg', '-m', '256',
    '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guest.append,
    '-qmp', `unix:${qmpSocket},server=on,wait=off`,
    '-serial', `file:${path.join(dir, 'console.log')}`, '-serial', `unix:${ctl},server=on,wait=off`,
    '-drive', `file=${data},format=qcow2,if=none,id=drive0`, '-device', 'virtio-blk-pci,drive=drive0,id=vd0',
    '-drive', `file=${scratch},format=raw,if=none,id=drive1`, '-device', 'virtio-blk-pci,drive=drive1,id=vd1',
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  control = await ControlChannel.connect(ctl, 120_000);
  qmp = await QmpClient.connect(qmpSocket, { log, timeoutMs: 10_000 });
  qmp.events.subscribe((event: QmpEvent) => events.push(event));
  const blocks = await queryBlock();
  disks = {
    data: parentDisk('data', 'drive0', data, 'qcow2', 64 * MiB, blocks),
    scratch: parentDisk('scratch', 'drive1', scratch, 'raw', 64 * MiB, blocks),
  };
  await control.waitReady(120_000);
}, 300_000);

afterAll(async () => {
  try {
    if (qmp?.state === 'ready') {
      await qmp.execute('quit').catch(() => {});
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  } finally {
    const left = await killLeftovers(dir);
    control?.close();
    if (left.length > 0) throw new Error(`QEMU processes left behind: ${left.join(', ')}`);
    await rm(dir, { recursive: true, force: true });
  }
});

describe('fleecing backend on stock QEMU 7.2 (standalone)', () => {
  it('freezes both disks at the halt while the parent writes its own files; the child may open the view early', async () => {
    const workDir = path.join(dir, 'work1');
    await mkdir(workDir, { recursive: true });
    const written = await guestWrite('042', 8); // 0x22 in 0..8M, before the halt
    expect(written.rc).toBe(0);
    const snapshots = [
      await fleecingBackend.prepare(disks.data, context(workDir, 'job1', 16), AbortSignal.timeout(30_000)),
      await fleecingBackend.prepare(disks.scratch, context(workDir, 'job1', 16), AbortSignal.timeout(30_000)),
    ] as DiskSnapshot[];
    try {
      await viewScenario(workDir, snapshots);
    } finally {
      for (const snapshot of snapshots) await snapshot.discard().catch((error: unknown) => log.error({ err: String(error) }, 'discard failed'));
    }
  });

  for (const variant of [
    { name: 'the free-space watch breaks the snapshot before the fleecing filesystem fills', reserveMiB: 8, byWatch: true },
    { name: 'with no reserve the filesystem fills and QEMU\'s break-snapshot lets the guest write on', reserveMiB: 0, byWatch: false },
  ]) {
    it(`fleecing storage too small: ${variant.name}; the guest never sees an error`, async () => {
      const mount = path.join(dir, variant.byWatch ? 'small-a' : 'small-b');
      await mountSmallFs(mount, 32);
      try {
        expect((await guestWrite('125', 40)).rc).toBe(0); // 0x55: 40 MiB of data the view must keep
        const job = variant.byWatch ? 'job2' : 'job3';
        const snapshot = await fleecingBackend.prepare(disks.scratch, context(mount, job, variant.reserveMiB), AbortSignal.timeout(30_000)) as DiskSnapshot;
        const low: string[] = [];
        const stopWatching = snapshot.watch!((why) => low.push(why));
        try {
        await freeze([snapshot]);
        const overwrite = await guestWrite('146', 40); // 0x66 over all of it: 40 MiB to copy into < 32 MiB
        expect(overwrite.rc).toBe(0);
        expect(await status()).toBe('running');
        expect(events.filter((event) => event.event === 'BLOCK_IO_ERROR')).toEqual([]);
        expect(await qemuIo(disks.scratch.file, 'read -P 0x66 0 40M')).toMatch(/read 41943040\/41943040/);
        const free = await freeBytes(mount);
        log.info({ variant: variant.name, freeBytes: free, low }, 'after the overwrite');
        // With the watch the image stopped growing well before the end; without, it really filled.
        if (variant.byWatch) expect(free).toBeGreaterThan(2 * MiB);
        else expect(free).toBeLessThan(MiB);
        if (variant.byWatch) {
          await expect.poll(() => low.length, { timeout: 5000 }).toBe(1);
          expect(low[0]).toMatch(/under the reserve/);
          // The watch detached the filter itself: the guest writes straight to its own node.
          expect((await queryBlock()).find((entry) => entry.device === 'drive1')?.inserted?.['node-name']).toBe(disks.scratch.nodeName);
        }
        const materialised = snapshot.materialise(path.join(dir, `out-${job}.raw`), AbortSignal.timeout(60_000), () => {}).then(() => undefined, (error: unknown) => error);
        const error = await materialised;
        expect(isForksnapError(error, 'NO_SPACE'), String(error)).toBe(true);
        } finally {
          stopWatching();
          await snapshot.discard();
        }
        await expectViewGone([snapshot]);
        await rm(path.join(dir, `out-${job}.raw`), { force: true });
        expect(await readdir(path.join(mount, 'fleecing'))).toEqual([]);
        expect(await status()).toBe('running');
      } finally {
        await unmount(mount);
      }
    });
  }

  it('leaves the parent\'s images clean (qemu-img check after QEMU quits)', async () => {
    expect(events.filter((event) => event.event === 'BLOCK_IO_ERROR')).toEqual([]);
    await qmp.execute('quit');
    await new Promise((resolve) => qemu!.exitCode !== null ? resolve(undefined) : qemu!.once('exit', resolve));
    const check = await execa('qemu-img', ['check', disks.data.file], { reject: false, all: true });
    expect(check.exitCode, check.all).toBe(0);
    await writeFile(path.join(dir, 'done'), '');
  });
});
