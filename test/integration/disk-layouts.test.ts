import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlChannel } from '../helpers/control-channel.js';
import { api, spawnDaemon } from '../helpers/daemon-process.js';
import { resultOf, runCli, type CliResult } from '../helpers/forksnap-cli.js';
import { inspectExt4 } from '../helpers/image-inspect.js';
import { expectNothingLeft } from '../helpers/leftovers.js';
import { killLeftovers } from '../helpers/processes.js';
import { vmDiskFiles, vmStatus } from '../helpers/qmp.js';
import { testGuest } from '../helpers/test-guest.js';
import { keepRootOnFailure } from '../helpers/test-root.js';
import { ensureXfsMount } from '../helpers/xfs.js';

/**
 * Two-disk VMs that forksnap did not start, in the device layouts people and libvirt use, each
 * attached with `forksnap vm attach` and snapshotted once with each disk backend (reflink: the
 * files are on XFS; qcow2-overlay). Checked like attach.test.ts: clean, one image per disk at the
 * absolute path the JSON names (opened there, checksummed, `qemu-img check`ed), disk ids the user
 * recognises, the parent running on its own files, nothing left behind.
 *
 * Disk 1 is the test guest's data disk (raw, mounted by the guest as /data). Disk 2 is a fresh
 * 32 MiB ext4 in qcow2 that the guest does not mount, with a marker file naming the layout: its
 * image must exist at its path, check clean, have the right size and hold that marker (so it is
 * disk 2's image, not a second copy of disk 1).
 *
 * One guest boot per layout (a layout is a command line): four boots, eight snapshots.
 */
const STOCK_QEMU = '/usr/bin/qemu-system-x86_64';
const DISK2_BYTES = 32 * 1024 * 1024;

interface Files { disk1: string; disk2: string }

interface Layout {
  readonly name: string;
  /** The disk ids forksnap must give: what the user named (device id, else drive id, else node). */
  readonly ids: readonly [string, string];
  args(files: Files): string[];
}

const json = (value: object) => JSON.stringify(value);

const LAYOUTS: Layout[] = [
  {
    name: 'blockdev-device-ids',
    ids: ['dj', 'dl'],
    args: ({ disk1, disk2 }) => [
      '-blockdev', `driver=file,filename=${disk1},node-name=jf`, '-blockdev', 'driver=raw,file=jf,node-name=j0', '-device', 'virtio-blk-pci,drive=j0,id=dj',
      '-blockdev', `driver=file,filename=${disk2},node-name=lf`, '-blockdev', 'driver=qcow2,file=lf,node-name=l0', '-device', 'virtio-blk-pci,drive=l0,id=dl',
    ],
  },
  {
    // Node names sharing their first 17 characters: cut to 31 with a job id in front, they collided.
    name: 'blockdev-no-device-ids',
    ids: ['data-format-node-0', 'data-format-node-1'],
    args: ({ disk1, disk2 }) => [
      '-blockdev', `driver=raw,node-name=data-format-node-0,file.driver=file,file.filename=${disk1}`, '-device', 'virtio-blk-pci,drive=data-format-node-0',
      '-blockdev', `driver=qcow2,node-name=data-format-node-1,file.driver=file,file.filename=${disk2}`, '-device', 'virtio-blk-pci,drive=data-format-node-1',
    ],
  },
  {
    name: 'legacy-drive',
    ids: ['drive-virtio-disk0', 'drive-virtio-disk1'],
    args: ({ disk1, disk2 }) => [
      '-drive', `file=${disk1},format=raw,if=none,id=drive-virtio-disk0`, '-device', 'virtio-blk-pci,drive=drive-virtio-disk0',
      '-drive', `file=${disk2},format=qcow2,if=none,id=drive-virtio-disk1`, '-device', 'virtio-blk-pci,drive=drive-virtio-disk1',
    ],
  },
  {
    // What libvirt 9 generates (numbered last disk first), JSON syntax for -blockdev and -device.
    name: 'libvirt-json',
    ids: ['virtio-disk0', 'virtio-disk1'],
    args: ({ disk1, disk2 }) => [
      '-blockdev', json({ driver: 'file', filename: disk1, 'node-name': 'libvirt-2-storage', 'auto-read-only': true, discard: 'unmap' }),
      '-blockdev', json({ 'node-name': 'libvirt-2-format', 'read-only': false, driver: 'raw', file: 'libvirt-2-storage' }),
      '-device', json({ driver: 'virtio-blk-pci', drive: 'libvirt-2-format', id: 'virtio-disk0', bootindex: 1 }),
      '-blockdev', json({ driver: 'file', filename: disk2, 'node-name': 'libvirt-1-storage', 'auto-read-only': true, discard: 'unmap' }),
      '-blockdev', json({ 'node-name': 'libvirt-1-format', 'read-only': false, driver: 'qcow2', file: 'libvirt-1-storage' }),
      '-device', json({ driver: 'virtio-blk-pci', drive: 'libvirt-1-format', id: 'virtio-disk1' }),
    ],
  },
];

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** A fresh ext4 in qcow2 holding /layout = the layout's name. */
async function makeSecondDisk(file: string, layout: string, scratch: string): Promise<void> {
  const content = path.join(scratch, 'disk2-content');
  await mkdir(content, { recursive: true });
  await writeFile(path.join(content, 'layout'), layout);
  const raw = path.join(scratch, 'disk2.raw');
  await execa('truncate', ['-s', String(DISK2_BYTES), raw]);
  await execa('mkfs.ext4', ['-q', '-F', '-d', content, raw]);
  await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
}

async function catFromExt4(image: string, format: 'raw' | 'qcow2', file: string, scratch: string): Promise<string | undefined> {
  const raw = path.join(scratch, `cat-${path.basename(image)}.raw`);
  await execa('qemu-img', ['convert', '-q', '-f', format, '-O', 'raw', image, raw]);
  const result = await execa('debugfs', ['-R', `cat ${file}`, raw], { reject: false });
  await execa('rm', ['-f', raw]);
  return result.exitCode === 0 && !/File not found/.test(result.stderr) ? result.stdout : undefined;
}

/**
 * What a backup script does with `snapshot create --json`: take the `result` line, check the
 * contract version, and open every image at the path it names (nothing else: no knowledge of the
 * store's layout). Written in Python, as such a script would be, to keep us honest about the JSON.
 */
const BACKUP_SCRIPT = String.raw`
import json, subprocess, sys
result = None
for line in sys.stdin:
    line = line.strip()
    if not line.startswith('{'):
        continue
    event = json.loads(line)
    if event.get('type') == 'result':
        result = event['snapshot']
if result is None:
    sys.exit('no result line')
if result['schemaVersion'] != 1:
    sys.exit('unknown schemaVersion %r' % result['schemaVersion'])
shipped = []
for disk in result['disks']:
    image = disk['image']
    info = json.loads(subprocess.check_output(['qemu-img', 'info', '--output=json', '-f', image['format'], image['path']]))
    shipped.append({'id': disk['id'], 'path': image['path'], 'format': info['format'], 'virtualSize': info['virtual-size'], 'expectedVirtualSize': disk['virtualSize']})
print(json.dumps(shipped))
`;

async function backupScriptReads(stdout: string): Promise<{ id: string; path: string; format: string; virtualSize: number; expectedVirtualSize: number }[]> {
  const run = await execa('python3', ['-c', BACKUP_SCRIPT], { input: stdout, reject: false });
  expect(run.exitCode, run.stderr).toBe(0);
  return JSON.parse(run.stdout) as { id: string; path: string; format: string; virtualSize: number; expectedVirtualSize: number }[];
}

describe.each(LAYOUTS)('two-disk VM started by hand: $name', (layout) => {
  let root: string;
  let state: string;
  let qmpSocket: string;
  let control: ControlChannel;
  let files: Files;
  const vm = layout.name;

  beforeAll(async () => {
    // Short: the child's QMP socket lives under it, and UNIX socket paths end at 107 bytes.
    root = await mkdtemp(path.join(await ensureXfsMount(), `lay${LAYOUTS.indexOf(layout)}-`));
    state = path.join(root, 'state');
    const guest = await testGuest();
    const disks = path.join(root, 'disks');
    await mkdir(disks, { recursive: true });
    files = { disk1: path.join(disks, 'disk1.raw'), disk2: path.join(disks, 'disk2.qcow2') };
    await copyFile(guest.dataDisk, files.disk1);
    await makeSecondDisk(files.disk2, layout.name, root);
    qmpSocket = path.join(root, 'qmp.sock');
    const ctl = path.join(root, 'ctl.sock');
    await execa(STOCK_QEMU, [
      '-machine', 'q35,accel=tcg', '-m', '256', '-nodefaults', '-display', 'none', '-name', `guest=${vm}`,
      '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', `${guest.append} fsnap.workload=1`,
      ...layout.args(files),
      '-serial', `file:${path.join(root, 'console.log')}`, '-serial', `unix:${ctl},server=on,wait=off`,
      '-qmp', `unix:${qmpSocket},server=on,wait=off`, '-daemonize', '-pidfile', path.join(root, 'qemu.pid'),
    ]);
    control = await ControlChannel.connect(ctl, 120_000);
    await control.waitForTick(2);
  }, 300_000);

  const scratch = keepRootOnFailure();

  afterAll(async () => {
    control?.close();
    const left = root ? await killLeftovers(root) : [];
    // The hand-started QEMU is ours to kill; nothing else may be left.
    expect(left.length, 'QEMU processes left behind').toBeLessThanOrEqual(1);
    // ~140 MB per layout on the shared XFS: kept only when a test failed, for a look.
    await scratch.remove(root);
  });

  it('vm attach names the disks as the user did', async () => {
    const attached = await runCli(['vm', 'attach', vm, '--qmp', qmpSocket, '--json'], state);
    expect(attached.exitCode, attached.stderr).toBe(0);
    const record = JSON.parse(attached.stdout) as { disks: { id: string; path: string; format: string }[] };
    expect(Object.fromEntries(record.disks.map((disk) => [disk.id, disk.path]))).toEqual({ [layout.ids[0]]: files.disk1, [layout.ids[1]]: files.disk2 });
  });

  it.each([['reflink'], ['qcow2-overlay']])('snapshot with --disk-backend %s: clean, one image per disk at the path the JSON names', async (backend) => {
    const before = control.lastTick;
    const name = `${vm}-${backend}`.slice(0, 64);
    const cli: CliResult = await runCli(['snapshot', 'create', vm, '--json', '--name', name, '--disk-backend', backend], state);
    expect(cli.exitCode, `${cli.stderr}\n${cli.stdout.slice(-2000)}`).toBe(0);
    const snapshot = resultOf(cli);
    expect(snapshot.schemaVersion).toBe(1);
    expect(snapshot.consistency).toBe('clean');
    expect(path.isAbsolute(snapshot.dir)).toBe(true);

    // One image per disk, under the ids the user gave, each from its own source file.
    const disks = snapshot.disks as Record<string, any>[];
    expect(Object.fromEntries(disks.map((disk) => [disk.id, disk.source]))).toEqual({ [layout.ids[0]]: files.disk1, [layout.ids[1]]: files.disk2 });
    for (const disk of disks) {
      expect(backend === 'reflink' ? ['reflink'] : ['qcow2-overlay', 'fleecing']).toContain(disk.backend);
      const image = disk.image as { path: string; file: string; format: 'raw' | 'qcow2'; sizeBytes: number; sha256: string; backing?: { snapshot: string } };
      expect(path.isAbsolute(image.path), image.path).toBe(true);
      // The second snapshot of the VM is stored as an increment over the first (the default).
      expect(Object.keys(image).sort()).toEqual(image.backing ? ['backing', 'backingPath', 'file', 'format', 'path', 'sha256', 'sizeBytes'] : ['file', 'format', 'path', 'sha256', 'sizeBytes']);
      expect((await stat(image.path)).size).toBe(image.sizeBytes);
      expect(await sha256(image.path)).toBe(image.sha256);
      const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', '-f', image.format, image.path])).stdout) as { 'virtual-size': number };
      expect(info['virtual-size']).toBe(disk.virtualSize);
      if (image.format === 'qcow2') {
        const check = await execa('qemu-img', ['check', '-q', image.path], { reject: false });
        expect(check.exitCode, check.stdout + check.stderr).toBe(0);
      }
    }
    const [first, second] = [disks.find((disk) => disk.id === layout.ids[0])!, disks.find((disk) => disk.id === layout.ids[1])!];
    expect(first.sourceFormat).toBe('raw');
    expect(first.image.format).toBe(first.image.backing ? 'qcow2' : 'raw');
    expect(second.image.format).toBe('qcow2');
    const facts = await inspectExt4(first.image.path, first.image.format);
    expect(facts.needsRecovery).toBe(false);
    expect(facts.cleanShutdown).toBeDefined();
    expect(Math.max(...facts.ticks)).toBeGreaterThanOrEqual(before);
    expect(second.virtualSize).toBe(DISK2_BYTES);
    expect(await catFromExt4(second.image.path, 'qcow2', '/layout', root)).toBe(layout.name);

    // A backup script reading the JSON finds every image where it says.
    const shipped = await backupScriptReads(cli.stdout);
    expect(shipped.map((entry) => entry.path).sort()).toEqual(disks.map((disk) => disk.image.path).sort());
    for (const entry of shipped) expect(entry.virtualSize).toBe(entry.expectedVirtualSize);

    // show --json and list --json name the same absolute paths.
    const shown = await runCli(['snapshot', 'show', name, '--json'], state);
    expect(shown.exitCode, shown.stderr).toBe(0);
    expect((JSON.parse(shown.stdout) as { disks: { image: { path: string } }[] }).disks.map((disk) => disk.image.path)).toEqual(disks.map((disk) => disk.image.path));
    const listed = await runCli(['snapshot', 'list', vm, '--json'], state);
    const entry = (JSON.parse(listed.stdout) as { id: string; schemaVersion: number; disks: { image: { path: string } }[] }[]).find((item) => item.id === name);
    expect(entry?.schemaVersion).toBe(1);
    expect(entry?.disks.map((disk) => disk.image.path)).toEqual(disks.map((disk) => disk.image.path));
    // The job-done event carries the same view.
    const done = cli.lines.find((line) => line.type === 'job-done') as { snapshot?: { disks: { image: { path: string } }[] } } | undefined;
    expect(done?.snapshot?.disks.map((disk) => disk.image.path)).toEqual(disks.map((disk) => disk.image.path));

    // The parent runs on, on its own files, and nothing is left behind.
    expect((await vmStatus(qmpSocket)).status).toBe('running');
    expect((await vmDiskFiles(qmpSocket)).sort()).toEqual([files.disk1, files.disk2].sort());
    const tick = control.lastTick;
    expect(await control.waitForTick(tick, 10_000)).toBeGreaterThan(tick);
    await expectNothingLeft(state, path.dirname(files.disk1));
    expect(JSON.parse(await readFile(path.join(snapshot.dir, 'meta.json'), 'utf8')).disks[0].image).not.toHaveProperty('path');
  });

  // Once (on the last layout): the same view through the daemon, its HTTP API and its WebSocket.
  if (layout === LAYOUTS.at(-1)) {
    it('through the daemon: the result, the WebSocket job-done event and the HTTP API name the same absolute paths', async () => {
      const daemon = await spawnDaemon(state);
      try {
        const name = `${vm}-daemon`;
        const cli = await runCli(['snapshot', 'create', vm, '--json', '--name', name], state);
        expect(cli.exitCode, `${cli.stderr}\n${daemon.logs().slice(-2000)}`).toBe(0);
        const paths = (resultOf(cli).disks as { image: { path: string; sha256: string } }[]).map((disk) => disk.image.path);
        expect(paths).toHaveLength(2);
        for (const image of paths) expect(path.isAbsolute(image) && (await stat(image)).isFile()).toBe(true);
        // The CLI printed the events the daemon sent over the WebSocket: job-done carries the view.
        const done = cli.lines.find((line) => line.type === 'job-done') as { job: string; snapshot: { schemaVersion: number; disks: { image: { path: string } }[] } };
        expect(done.snapshot.schemaVersion).toBe(1);
        expect(done.snapshot.disks.map((disk) => disk.image.path)).toEqual(paths);
        const job = await api(daemon, 'GET', `/v1/jobs/${done.job}`);
        expect(job.status, 'the daemon ran the job').toBe(200);
        expect((job.body.snapshot.disks as { image: { path: string } }[]).map((disk) => disk.image.path)).toEqual(paths);
        const shown = await api(daemon, 'GET', `/v1/snapshots/${name}`);
        expect(shown.body.schemaVersion).toBe(1);
        expect((shown.body.disks as { image: { path: string } }[]).map((disk) => disk.image.path)).toEqual(paths);
        const listed = (await api(daemon, 'GET', `/v1/snapshots?vm=${vm}`)).body as { id: string; disks: { image: { path: string } }[] }[];
        expect(listed.find((entry) => entry.id === name)?.disks.map((disk) => disk.image.path)).toEqual(paths);
      } finally {
        daemon.signal('SIGTERM');
        await daemon.process;
      }
      expect((await vmStatus(qmpSocket)).status).toBe('running');
    });
  }
});
