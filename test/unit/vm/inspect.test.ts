import { describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { parseArgv } from '../../../src/qemu/command-line.js';
import type { BlockInfo } from '../../../src/qmp/schemas.js';
import { assignDiskIds, deviceIdFromQdev, MAX_DISK_ID_LENGTH } from '../../../src/vm/disk-id.js';
import { blockdevNodeName, driveId, refuseUnclonableOptions, writableDisks } from '../../../src/vm/inspect.js';

const BASE = ['-machine', 'q35,accel=kvm', '-m', '1024', '-drive', 'file=/vm/disk.qcow2,if=virtio,id=d0', '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0'];

function refusal(extra: string[]): ForksnapError {
  try {
    refuseUnclonableOptions(parseArgv(['qemu-system-x86_64', ...BASE, ...extra]));
  } catch (error) {
    expect(error).toBeInstanceOf(ForksnapError);
    return error as ForksnapError;
  }
  throw new Error(`expected ${extra.join(' ')} to be refused`);
}

function accepts(extra: string[]): void {
  expect(() => refuseUnclonableOptions(parseArgv(['qemu-system-x86_64', ...BASE, ...extra]))).not.toThrow();
}

describe('refuseUnclonableOptions', () => {
  it('accepts an ordinary VM', () => {
    accepts([]);
  });

  it.each([
    ['vfio-pci passthrough', ['-device', 'vfio-pci,host=0000:01:00.0,id=gpu0'], /vfio-pci \(id gpu0\)/],
    ['vhost-user-blk', ['-device', 'vhost-user-blk-pci,chardev=vub0,id=vub'], /vhost-user-blk-pci/],
    ['vhost-user-fs (virtiofs)', ['-device', '{"driver":"vhost-user-fs-pci","chardev":"fs0","tag":"share"}'], /vhost-user-fs-pci/],
    ['vhost-vsock', ['-device', 'vhost-vsock-pci,guest-cid=3'], /vhost-vsock-pci/],
    ['usb-host', ['-device', 'usb-host,vendorid=0x046d,productid=0xc52b'], /usb-host/],
    ['ivshmem', ['-device', 'ivshmem-plain,memdev=hostmem'], /ivshmem-plain/],
    ['vhost-user netdev', ['-netdev', 'vhost-user,id=vu0,chardev=c0'], /netdev vhost-user \(id vu0\)/],
    ['vhost-user -nic', ['-nic', 'vhost-user,chardev=c0'], /netdev vhost-user/],
    ['memfd memory backend (shared by default)', ['-object', 'memory-backend-memfd,id=mem0,size=1G'], /memory backend mem0 is shared/],
    ['file memory backend with share=on', ['-object', 'memory-backend-file,id=mem1,size=1G,mem-path=/dev/shm/vm,share=on'], /memory backend mem1 is shared/],
    ['JSON memory backend with share=true', ['-object', '{"qom-type":"memory-backend-file","id":"mem2","size":1073741824,"mem-path":"/dev/hugepages","share":true}'], /memory backend mem2 is shared/],
    ['-snapshot', ['-snapshot'], /-snapshot/],
    ['a drive with snapshot=on', ['-drive', 'file=/vm/scratch.qcow2,if=virtio,id=scratch,snapshot=on'], /drive scratch has snapshot=on/],
  ])('refuses %s with VM_UNSUPPORTED_DEVICE naming it', (_what, extra, named) => {
    const error = refusal(extra);
    expect(error.code).toBe('VM_UNSUPPORTED_DEVICE');
    expect(error.message).toMatch(named);
    expect(error.message).toContain(`-${extra[0]!.slice(1)}`);
    expect(error.context).toMatchObject({ option: extra[0]!.slice(1), value: extra[1] });
    expect(error.exitCode).toBe(3);
  });

  it.each([
    ['memory-backend-ram', ['-object', 'memory-backend-ram,id=mem0,size=1G']],
    ['memory-backend-memfd with share=off', ['-object', 'memory-backend-memfd,id=mem0,size=1G,share=off']],
    ['memory-backend-file without share', ['-object', 'memory-backend-file,id=mem0,size=1G,mem-path=/dev/hugepages']],
    ['a drive with snapshot=off', ['-drive', 'file=/vm/b.qcow2,if=virtio,snapshot=off']],
    ['vhost-net acceleration of a tap netdev', ['-netdev', 'tap,id=t0,vhost=on']],
    ['other objects', ['-object', 'rng-random,id=rng0,filename=/dev/urandom', '-device', 'virtio-rng-pci,rng=rng0']],
  ])('accepts %s', (_what, extra) => {
    accepts(extra);
  });
});

describe('option readers', () => {
  it('driveId reads the id of a -drive', () => {
    expect(driveId({ name: 'drive', value: 'file=/a,,b,id=d0,if=none' })).toBe('d0');
    expect(driveId({ name: 'drive', value: 'file=/a' })).toBeUndefined();
  });

  it('blockdevNodeName reads dotted and JSON forms', () => {
    expect(blockdevNodeName({ name: 'blockdev', value: 'driver=qcow2,node-name=top,file=f0' })).toBe('top');
    expect(blockdevNodeName({ name: 'blockdev', value: '{"driver":"file","node-name":"f0","filename":"/a"}' })).toBe('f0');
    expect(blockdevNodeName({ name: 'blockdev', value: 'driver=file,filename=/a' })).toBeUndefined();
  });
});

/** A query-block entry as QEMU 7.2 reports it for a writable image. */
function block(device: string, qdev: string | undefined, nodeName: string, file: string): BlockInfo {
  return { device, ...(qdev !== undefined ? { qdev } : {}), removable: false, inserted: { 'node-name': nodeName, file, drv: 'qcow2', ro: false, image: { filename: file, format: 'qcow2', 'virtual-size': 1 << 26 } } };
}

function idsOf(argv: string[], blocks: BlockInfo[]): string[] {
  return writableDisks(blocks, parseArgv(['qemu-system-x86_64', ...argv]), '/vm').map((disk) => disk.id);
}

describe('disk ids', () => {
  it('deviceIdFromQdev reads the user id from the qdev path, or the plain id QEMU gives for ide/scsi disks', () => {
    expect(deviceIdFromQdev('/machine/peripheral/dj/virtio-backend')).toBe('dj');
    expect(deviceIdFromQdev('/machine/peripheral/virtio-disk0/virtio-backend')).toBe('virtio-disk0');
    expect(deviceIdFromQdev('/machine/peripheral/sdisk')).toBe('sdisk');
    expect(deviceIdFromQdev('sdisk')).toBe('sdisk');
    expect(deviceIdFromQdev('/machine/peripheral-anon/device[0]/virtio-backend')).toBeUndefined();
    expect(deviceIdFromQdev('/machine/unattached/device[12]')).toBeUndefined();
    expect(deviceIdFromQdev(undefined)).toBeUndefined();
    expect(deviceIdFromQdev('')).toBeUndefined();
  });

  // The query-block answers below are what stock QEMU 7.2 reported for these command lines.
  it('-blockdev with -device id=: the device ids, not the QOM child name', () => {
    expect(idsOf(
      ['-blockdev', 'driver=file,filename=/vm/jf,node-name=jf', '-blockdev', 'driver=qcow2,file=jf,node-name=j0', '-device', 'virtio-blk-pci,drive=j0,id=dj',
        '-blockdev', 'driver=file,filename=/vm/lf,node-name=lf', '-blockdev', 'driver=qcow2,file=lf,node-name=l0', '-device', 'virtio-blk-pci,drive=l0,id=dl'],
      [block('', '/machine/peripheral/dj/virtio-backend', 'j0', '/vm/jf'), block('', '/machine/peripheral/dl/virtio-backend', 'l0', '/vm/lf')],
    )).toEqual(['dj', 'dl']);
  });

  it('-blockdev without device ids: the top node names', () => {
    expect(idsOf(
      ['-blockdev', 'driver=qcow2,node-name=data-format-node-0,file.driver=file,file.filename=/vm/a', '-device', 'virtio-blk-pci,drive=data-format-node-0',
        '-blockdev', 'driver=qcow2,node-name=data-format-node-1,file.driver=file,file.filename=/vm/b', '-device', 'virtio-blk-pci,drive=data-format-node-1'],
      [block('', '/machine/peripheral-anon/device[0]/virtio-backend', 'data-format-node-0', '/vm/a'), block('', '/machine/peripheral-anon/device[1]/virtio-backend', 'data-format-node-1', '/vm/b')],
    )).toEqual(['data-format-node-0', 'data-format-node-1']);
  });

  it('legacy -drive: the -device id when there is one, else the -drive id', () => {
    const argv = ['-drive', 'file=/vm/a,if=none,id=drive-virtio-disk0', '-device', 'virtio-blk-pci,drive=drive-virtio-disk0',
      '-drive', 'file=/vm/b,if=none,id=drive-virtio-disk1', '-device', 'virtio-blk-pci,drive=drive-virtio-disk1,id=virtio-disk1'];
    expect(idsOf(argv, [
      block('drive-virtio-disk0', '/machine/peripheral-anon/device[0]/virtio-backend', '#block306', '/vm/a'),
      block('drive-virtio-disk1', '/machine/peripheral/virtio-disk1/virtio-backend', '#block508', '/vm/b'),
    ])).toEqual(['drive-virtio-disk0', 'virtio-disk1']);
  });

  it('libvirt JSON syntax: the device ids', () => {
    const argv = [
      '-blockdev', '{"driver":"file","filename":"/vm/a","node-name":"libvirt-2-storage"}', '-blockdev', '{"node-name":"libvirt-2-format","driver":"qcow2","file":"libvirt-2-storage"}',
      '-device', '{"driver":"virtio-blk-pci","drive":"libvirt-2-format","id":"virtio-disk0","bootindex":1}',
      '-blockdev', '{"driver":"file","filename":"/vm/b","node-name":"libvirt-1-storage"}', '-blockdev', '{"node-name":"libvirt-1-format","driver":"qcow2","file":"libvirt-1-storage"}',
      '-device', '{"driver":"virtio-blk-pci","drive":"libvirt-1-format","id":"virtio-disk1"}',
    ];
    expect(idsOf(argv, [block('', '/machine/peripheral/virtio-disk0/virtio-backend', 'libvirt-2-format', '/vm/a'), block('', '/machine/peripheral/virtio-disk1/virtio-backend', 'libvirt-1-format', '/vm/b')]))
      .toEqual(['virtio-disk0', 'virtio-disk1']);
  });

  it('does not depend on the order QEMU lists the disks in', () => {
    const sources = [{ kind: 'device', name: 'x' }, { kind: 'node', name: 'x' }, { kind: 'drive', name: 'a.b' }, { kind: 'node', name: 'a_b' }] as const;
    const forward = assignDiskIds(sources);
    const backward = assignDiskIds([...sources].reverse()).reverse();
    expect(backward).toEqual(forward);
    expect(new Set(forward).size).toBe(sources.length);
    // The device keeps the contested plain name; the node gets a hash of where its name came from.
    expect(forward[0]).toBe('x');
    expect(forward[1]).toMatch(/^x-[0-9a-f]{6}$/);
    // A name that had to be cleaned never takes an unchanged one's place.
    expect(forward[3]).toBe('a_b');
    expect(forward[2]).toMatch(/^a_b-[0-9a-f]{6}$/);
  });

  it('cleans names into file-name-safe ids without ever making two of them equal', () => {
    const names = ['a.b', 'a_b', 'a/b', 'a b', 'a:b', '.hidden', '_x', '-x', 'x', '..', '', 'A', 'a', 'crash.x'];
    const ids = assignDiskIds(names.map((name) => ({ kind: 'drive' as const, name })));
    expect(new Set(ids).size).toBe(names.length);
    for (const id of ids) expect(id).toMatch(/^[A-Za-z0-9][A-Za-z0-9_-]*$/);
    expect(ids[names.indexOf('a_b')]).toBe('a_b');
    expect(ids[names.indexOf('x')]).toBe('x');
    // No dots: `<id>.<format>` and `<id>.crash.<format>` file names cannot be confused.
    for (const id of ids) expect(id).not.toContain('.');
  });

  it('shortens long names with a hash, so two long names sharing a prefix stay apart', () => {
    const long = 'd'.repeat(70);
    const ids = assignDiskIds([{ kind: 'device', name: `${long}0` }, { kind: 'device', name: `${long}1` }]);
    expect(ids[0]).not.toBe(ids[1]);
    for (const id of ids) expect(id.length).toBeLessThanOrEqual(MAX_DISK_ID_LENGTH);
    expect(assignDiskIds([{ kind: 'device', name: `${long}0` }])).toEqual([ids[0]]);
  });

  it('a forksnap-started VM (-drive id=X, -device id=X) gets its spec disk id', () => {
    expect(idsOf(['-drive', 'if=none,id=data,file=/vm/d,format=raw', '-device', 'virtio-blk-pci,drive=data,id=data'], [block('data', '/machine/peripheral/data/virtio-backend', '#block123', '/vm/d')]))
      .toEqual(['data']);
  });
});
