import { describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { parseArgv } from '../../../src/qemu/command-line.js';
import { blockdevNodeName, driveId, refuseUnclonableOptions } from '../../../src/vm/inspect.js';

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
