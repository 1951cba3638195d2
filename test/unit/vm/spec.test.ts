import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { loadVmSpec, parseVmSpec, specToArgs, type VmSpec } from '../../../src/vm/spec.js';

function specError(raw: unknown): ForksnapError {
  try {
    parseVmSpec(raw, '/specs', 'vm.json');
  } catch (error) {
    expect(error).toBeInstanceOf(ForksnapError);
    expect((error as ForksnapError).code).toBe('INVALID_SPEC');
    return error as ForksnapError;
  }
  throw new Error('expected the spec to be refused');
}

const minimal = { name: 'vm1', memoryMiB: 256 };

describe('parseVmSpec', () => {
  it('fills defaults for a minimal spec', () => {
    expect(parseVmSpec(minimal, '/specs')).toEqual({
      name: 'vm1',
      memoryMiB: 256,
      cpus: 1,
      machine: 'q35',
      accel: 'kvm:tcg',
      boot: { bios: 'default' },
      disks: [],
      nics: [],
      serial: [],
      extraArgs: [],
    });
  });

  it('resolves relative paths against the base dir and keeps absolute ones', () => {
    const spec = parseVmSpec({
      ...minimal,
      boot: { kernel: 'boot/vmlinuz', initrd: '/abs/initrd.img', append: 'console=ttyS0' },
      disks: [{ id: 'root', path: '../images/root.qcow2', format: 'qcow2' }, { id: 'data', path: '/srv/data.raw', format: 'raw' }],
      serial: [{ type: 'file', path: 'logs/console.log' }, { type: 'pty' }],
    }, '/specs/vm1');
    expect(spec.boot).toEqual({ kernel: '/specs/vm1/boot/vmlinuz', initrd: '/abs/initrd.img', append: 'console=ttyS0' });
    expect(spec.disks.map((disk) => disk.path)).toEqual(['/specs/images/root.qcow2', '/srv/data.raw']);
    expect(spec.serial).toEqual([{ type: 'file', path: '/specs/vm1/logs/console.log' }, { type: 'pty' }]);
  });

  it('resolves a firmware path', () => {
    expect(parseVmSpec({ ...minimal, boot: { firmware: 'OVMF.fd' } }, '/fw').boot).toEqual({ firmware: '/fw/OVMF.fd' });
  });

  it('refuses unknown keys, naming them', () => {
    const error = specError({ ...minimal, memory: 512 });
    expect(error.message).toContain('"memory"');
    const nested = specError({ ...minimal, disks: [{ id: 'd0', path: 'a.raw', format: 'raw', sizeGiB: 4 }] });
    expect(nested.message).toMatch(/disks\.0: .*"sizeGiB"/);
  });

  it.each([['../x'], ['a/b'], ['.hidden'], [''], ['x'.repeat(65)]])('refuses the name %j', (name) => {
    const error = specError({ ...minimal, name });
    expect(error.message).toMatch(/^vm\.json is not a valid VM spec:\n {2}name: /);
    const problems = error.context.problems as string[];
    expect(problems.length).toBeGreaterThan(0);
    expect(problems.every((problem) => problem.startsWith('name: '))).toBe(true);
  });

  it('refuses a malformed MAC address with the key path', () => {
    const error = specError({ ...minimal, nics: [{ id: 'n0', mac: '52:54:00:12:34' }] });
    expect(error.message).toContain('nics.0.mac: mac: six hex pairs');
  });

  it('refuses a spec without memory', () => {
    const error = specError({ name: 'vm1' });
    expect(error.message).toMatch(/memoryMiB: /);
  });

  it('lists every problem, each with its path', () => {
    const error = specError({ name: 'a/b', memoryMiB: 8, disks: [{ id: '9bad', path: 'x', format: 'vmdk' }] });
    const problems = error.context.problems as string[];
    expect(problems.map((problem) => problem.split(':')[0])).toEqual(expect.arrayContaining(['name', 'memoryMiB', 'disks.0.id', 'disks.0.format']));
  });

  it('loadVmSpec reads a file and resolves paths against its directory', async () => {
    const tmp = await dir({ unsafeCleanup: true });
    try {
      const file = path.join(tmp.path, 'vm.json');
      await writeFile(file, JSON.stringify({ ...minimal, disks: [{ id: 'root', path: 'root.qcow2', format: 'qcow2' }] }));
      const spec = await loadVmSpec(file);
      expect(spec.disks[0]!.path).toBe(path.join(tmp.path, 'root.qcow2'));
      await writeFile(file, '{"name": "vm1",');
      await expect(loadVmSpec(file)).rejects.toMatchObject({ code: 'INVALID_SPEC', message: expect.stringContaining('not valid JSON') });
      await expect(loadVmSpec(path.join(tmp.path, 'missing.json'))).rejects.toMatchObject({ code: 'INVALID_SPEC', message: expect.stringContaining('cannot read spec file') });
    } finally {
      await tmp.cleanup();
    }
  });
});

describe('specToArgs', () => {
  const spec = (extra: Partial<Record<keyof VmSpec, unknown>>): VmSpec => parseVmSpec({ ...minimal, ...extra }, '/specs');

  it('starts with name, machine, memory, cpus and no default devices', () => {
    expect(specToArgs(spec({ cpus: 2, accel: 'tcg' }))).toEqual([
      '-name', 'guest=vm1', '-machine', 'q35,accel=tcg', '-m', '256', '-smp', '2', '-nodefaults', '-display', 'none', '-vga', 'none',
    ]);
  });

  it('boots a kernel with initrd and command line', () => {
    const args = specToArgs(spec({ boot: { kernel: '/b/vmlinuz', initrd: '/b/initrd', append: 'console=ttyS0 quiet' } }));
    expect(args.slice(-6)).toEqual(['-kernel', '/b/vmlinuz', '-initrd', '/b/initrd', '-append', 'console=ttyS0 quiet']);
  });

  it('declares disks as if=none drives with a device per interface and one SCSI controller', () => {
    const args = specToArgs(spec({
      disks: [
        { id: 'root', path: '/img/root,1.qcow2', format: 'qcow2', cache: 'none' },
        { id: 'seed', path: '/img/seed.raw', format: 'raw', interface: 'ide', readOnly: true },
        { id: 's1', path: '/img/s1.raw', format: 'raw', interface: 'scsi' },
        { id: 's2', path: '/img/s2.raw', format: 'raw', interface: 'scsi' },
      ],
    })).slice(specToArgs(spec({})).length);
    expect(args).toEqual([
      '-drive', 'if=none,id=root,file=/img/root,,1.qcow2,format=qcow2,cache=none',
      '-device', 'virtio-blk-pci,drive=root,id=root',
      '-drive', 'if=none,id=seed,file=/img/seed.raw,format=raw,readonly=on',
      '-device', 'ide-hd,drive=seed,id=seed',
      '-drive', 'if=none,id=s1,file=/img/s1.raw,format=raw',
      '-device', 'virtio-scsi-pci,id=scsi0',
      '-device', 'scsi-hd,drive=s1,id=s1,bus=scsi0.0',
      '-drive', 'if=none,id=s2,file=/img/s2.raw,format=raw',
      '-device', 'scsi-hd,drive=s2,id=s2,bus=scsi0.0',
    ]);
  });

  it('declares a netdev and a NIC device per nic, with repeated hostfwd and tap defaults', () => {
    const args = specToArgs(spec({
      nics: [
        { id: 'n0', mac: '52:54:00:12:34:56', backend: { type: 'user', hostfwd: ['tcp::2222-:22', 'tcp::8080-:80'] } },
        { id: 'n1', model: 'e1000', backend: { type: 'tap', ifname: 'tap7' } },
        { id: 'n2' },
      ],
    })).slice(specToArgs(spec({})).length);
    expect(args).toEqual([
      '-netdev', 'user,id=n0,hostfwd=tcp::2222-:22,hostfwd=tcp::8080-:80',
      '-device', 'virtio-net-pci,netdev=n0,id=n0-dev,mac=52:54:00:12:34:56',
      '-netdev', 'tap,id=n1,ifname=tap7,script=no,downscript=no',
      '-device', 'e1000,netdev=n1,id=n1-dev',
      '-netdev', 'user,id=n2',
      '-device', 'virtio-net-pci,netdev=n2,id=n2-dev',
    ]);
  });

  it('declares serial ports as chardevs referenced by -serial, then the extra args', () => {
    const args = specToArgs(spec({
      serial: [{ type: 'file', path: '/log/c.log' }, { type: 'socket', path: '/run/s.sock' }, { type: 'pty' }, { type: 'null' }],
      extraArgs: ['-device', 'virtio-rng-pci'],
    })).slice(specToArgs(spec({})).length);
    expect(args).toEqual([
      '-chardev', 'file,id=serial0,path=/log/c.log', '-serial', 'chardev:serial0',
      '-chardev', 'socket,id=serial1,path=/run/s.sock,server=on,wait=off', '-serial', 'chardev:serial1',
      '-chardev', 'pty,id=serial2', '-serial', 'chardev:serial2',
      '-chardev', 'null,id=serial3', '-serial', 'chardev:serial3',
      '-device', 'virtio-rng-pci',
    ]);
  });
});
