import { mkdtemp } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlChannel } from '../helpers/control-channel.js';
import { resultOf, runCli } from '../helpers/forksnap-cli.js';
import { inspectExt4 } from '../helpers/image-inspect.js';
import { killLeftovers } from '../helpers/processes.js';
import { vmStatus, withQmp } from '../helpers/qmp.js';
import { testGuest } from '../helpers/test-guest.js';

/**
 * A QEMU that forksnap did not start, with another device layout than `vm start` makes: -blockdev
 * (JSON) for the disk, legacy -nic, an e1000, a virtio-serial console, a pc machine. The child's
 * configuration comes from /proc/PID/cmdline and is checked against QMP.
 */
describe('vm attach: a QEMU started by someone else', () => {
  let root: string;
  let state: string;
  let qmpSocket: string;
  let control: ControlChannel;
  let disk: string;

  beforeAll(async () => {
    root = await mkdtemp('/var/tmp/forksnap-attach-');
    state = path.join(root, 'state');
    const guest = await testGuest();
    disk = path.join(root, 'data.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.dataDisk, '-F', 'raw', disk]);
    qmpSocket = path.join(root, 'qmp.sock');
    const ctl = path.join(root, 'ctl.sock');
    await execa('qemu-system-x86_64', [
      '-machine', 'pc,accel=tcg', '-m', '256', '-nodefaults', '-display', 'none', '-name', 'byhand',
      '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', `${guest.append} fsnap.workload=1`,
      '-blockdev', JSON.stringify({ driver: 'qcow2', 'node-name': 'data-fmt', file: { driver: 'file', filename: disk } }),
      '-device', 'virtio-blk-pci,drive=data-fmt,id=vdisk',
      '-nic', 'user,model=e1000,mac=52:54:00:aa:bb:cc',
      '-device', 'virtio-serial-pci', '-chardev', `file,id=vcon,path=${path.join(root, 'vcon.log')}`, '-device', 'virtconsole,chardev=vcon',
      '-serial', `file:${path.join(root, 'console.log')}`, '-serial', `unix:${ctl},server=on,wait=off`,
      '-qmp', `unix:${qmpSocket},server=on,wait=off`, '-daemonize', '-pidfile', path.join(root, 'qemu.pid'),
    ]);
    control = await ControlChannel.connect(ctl, 120_000);
    await control.waitForTick(2);
  }, 300_000);

  afterAll(async () => {
    control?.close();
    const left = await killLeftovers(root);
    // The hand-started QEMU is ours to kill; nothing else may be left.
    expect(left.length, 'QEMU processes left behind').toBeLessThanOrEqual(1);
  });

  it('attaches (pid found from the socket), and snapshots it cleanly', async () => {
    const attached = await runCli(['vm', 'attach', 'byhand', '--qmp', qmpSocket, '--json'], state);
    expect(attached.exitCode, attached.stderr).toBe(0);
    expect(JSON.parse(attached.stdout)).toMatchObject({ name: 'byhand', origin: 'attached', disks: [{ path: disk, format: 'qcow2' }] });
    const before = control.lastTick;
    const cli = await runCli(['snapshot', 'create', 'byhand', '--json', '--name', 'byhand-1'], state);
    expect(cli.exitCode, cli.stderr).toBe(0);
    const meta = resultOf(cli);
    expect(meta.consistency).toBe('clean');
    const facts = await inspectExt4(path.join(state, 'snapshots', 'byhand-1', meta.disks[0].image.file), 'qcow2');
    expect(facts.needsRecovery).toBe(false);
    expect(Math.max(...facts.ticks)).toBeGreaterThanOrEqual(before);
    expect((await vmStatus(qmpSocket)).status).toBe('running');
  });

  it('a device hot-plugged at runtime → refused with VM_CONFIG_MISMATCH naming it, parent untouched', async () => {
    await withQmp(qmpSocket, (qmp) => qmp.execute('device_add', { driver: 'virtio-rng-pci', id: 'hotrng' }));
    const cli = await runCli(['snapshot', 'create', 'byhand', '--json'], state);
    expect(cli.exitCode).toBe(3);
    const failed = cli.lines.find((line) => line.type === 'job-failed');
    expect(failed).toMatchObject({ code: 'VM_CONFIG_MISMATCH' });
    expect(String(failed?.message)).toMatch(/hotrng/);
    expect((await vmStatus(qmpSocket)).status).toBe('running');
    const tick = control.lastTick;
    expect(await control.waitForTick(tick, 10_000)).toBeGreaterThan(tick);
  });
});

describe('vm attach refuses what cannot be cloned safely', () => {
  let root: string;

  beforeAll(async () => {
    root = await mkdtemp('/var/tmp/forksnap-refuse-');
  });

  afterAll(async () => {
    const left = await killLeftovers(root);
    expect(left.length).toBeLessThanOrEqual(1);
  });

  it('shared guest RAM (memory-backend-memfd) → exit 3, VM_UNSUPPORTED_DEVICE naming the backend', async () => {
    const qmp = path.join(root, 'shared.sock');
    await execa('qemu-system-x86_64', ['-machine', 'q35,accel=tcg,memory-backend=shmem', '-m', '64', '-object', 'memory-backend-memfd,id=shmem,size=64M', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmp},server=on,wait=off`, '-daemonize', '-pidfile', path.join(root, 'shared.pid')]);
    const cli = await runCli(['vm', 'attach', 'shared', '--qmp', qmp], path.join(root, 'state'));
    expect(cli.exitCode).toBe(3);
    expect(cli.stderr).toMatch(/VM_UNSUPPORTED_DEVICE/);
    expect(cli.stderr).toMatch(/memory backend shmem is shared/);
  });
});
