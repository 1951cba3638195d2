import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { ControlChannel } from './control-channel.js';
import { REPO, runCli } from './forksnap-cli.js';

/**
 * The test guest (scripts/build-test-guest.sh, cached outside the repo): Debian kernel + busybox
 * initramfs, an ext4 data disk, a write workload, acpid that syncs, unmounts and powers off.
 */
export interface GuestManifest {
  kernel: string;
  initrd: string;
  dataDisk: string;
  append: string;
}

let manifest: GuestManifest | undefined;

export async function testGuest(): Promise<GuestManifest> {
  if (manifest) return manifest;
  const result = await execa('bash', [path.join(REPO, 'scripts', 'build-test-guest.sh')], { reject: false });
  if (result.exitCode !== 0) throw new Error(`building the test guest failed: ${result.stderr.slice(-3000)}`);
  const dir = result.stdout.trim().split('\n').at(-1)!;
  manifest = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as GuestManifest;
  return manifest;
}

export interface GuestVm {
  name: string;
  dir: string;
  disk: string;
  diskFormat: 'raw' | 'qcow2';
  consoleLog: string;
  control: ControlChannel;
  specFile: string;
}

/**
 * Start a test guest through the real CLI (`forksnap vm start`) in `dir`, and wait until its
 * control channel answers. The data disk is a raw copy (reflink-able) or a qcow2 overlay over
 * the cached template.
 */
export async function startGuestVm(options: { name: string; dir: string; stateDir: string; memoryMiB?: number; diskFormat?: 'raw' | 'qcow2'; append?: string; extraArgs?: string[]; nic?: boolean; env?: Record<string, string> }): Promise<GuestVm> {
  const guest = await testGuest();
  await mkdir(options.dir, { recursive: true });
  const diskFormat = options.diskFormat ?? 'raw';
  const disk = path.join(options.dir, `disk.${diskFormat}`);
  if (diskFormat === 'raw') await copyFile(guest.dataDisk, disk);
  else await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.dataDisk, '-F', 'raw', disk]);
  const consoleLog = path.join(options.dir, 'console.log');
  const control = path.join(options.dir, 'ctl.sock');
  const spec = {
    name: options.name,
    memoryMiB: options.memoryMiB ?? 256,
    machine: 'q35',
    accel: 'tcg',
    boot: { kernel: guest.kernel, initrd: guest.initrd, append: `${guest.append} ${options.append ?? 'fsnap.workload=1'}` },
    disks: [{ id: 'data', path: disk, format: diskFormat }],
    nics: options.nic === false ? [] : [{ id: 'net0', backend: { type: 'user', hostfwd: ['tcp:127.0.0.1:0-:22'] } }],
    serial: [{ type: 'file', path: consoleLog }, { type: 'socket', path: control }],
    extraArgs: options.extraArgs ?? [],
  };
  const specFile = path.join(options.dir, 'spec.json');
  await writeFile(specFile, JSON.stringify(spec, null, 2));
  const started = await runCli(['vm', 'start', specFile], options.stateDir, options.env ?? {});
  if (started.exitCode !== 0) throw new Error(`vm start failed (${started.exitCode}): ${started.stderr}`);
  const channel = await ControlChannel.connect(control, 120_000);
  return { name: options.name, dir: options.dir, disk, diskFormat, consoleLog, control: channel, specFile };
}
